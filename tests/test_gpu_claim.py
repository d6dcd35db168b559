"""Concurrent training jobs on a multi-GPU machine each claim a different GPU."""
from pipeline.train import claim_gpu


def test_each_claim_takes_a_free_gpu_and_falls_back_to_the_first(tmp_path):
    assert [claim_gpu(3, tmp_path) for _ in range(3)] == [0, 1, 2]
    assert claim_gpu(3, tmp_path) == 0
