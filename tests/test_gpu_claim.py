"""Concurrent training jobs on a multi-GPU machine each claim a different GPU."""
import pytest

from pipeline.errors import UserError
from pipeline.runs.device import claim_gpu


def test_each_claim_takes_a_free_gpu_and_one_too_many_is_a_clear_error(tmp_path):
    assert [claim_gpu(3, tmp_path) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(UserError, match=r"all 3 GPU\(s\) of this machine are held"):
        claim_gpu(3, tmp_path)
