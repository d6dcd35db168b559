import numpy as np
import pytest

from semisup.data.splits import SplitError, labeled_indices, make_split, verify_split

LABELS = np.array([0, 1, 2] * 10)


def test_split_is_balanced_seeded_and_hashed():
    split = make_split(LABELS, n_labels=6, num_classes=3, seed=1, dataset="toy")
    chosen = LABELS[split["labeled_indices"]]
    assert sorted(np.bincount(chosen)) == [2, 2, 2]
    assert split == make_split(LABELS, 6, 3, 1, "toy")
    assert split["labeled_indices"] != make_split(LABELS, 6, 3, 2, "toy")["labeled_indices"]
    assert verify_split(split) == split["labeled_indices"]


def test_hand_edited_split_is_detected():
    split = make_split(LABELS, 6, 3, 0, "toy")
    split["labeled_indices"][0] += 1
    with pytest.raises(SplitError, match="edited by hand"):
        verify_split(split, "seed0.json")


def test_budget_not_divisible_or_too_large():
    with pytest.raises(SplitError, match="multiple"):
        labeled_indices(LABELS, 7, 3, 0)
    with pytest.raises(SplitError, match="only 10"):
        labeled_indices(LABELS, 33, 3, 0)
