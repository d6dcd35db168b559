import numpy as np
import pytest

from pipeline.errors import UserError

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


def resealed(split: dict, indices) -> dict:
    """A split edited by hand and its sha256 recomputed: only the index checks can catch it."""
    from semisup.data.splits import indices_sha256

    return {**split, "labeled_indices": indices, "split_sha256": indices_sha256(indices)}


@pytest.mark.parametrize("indices, message", [
    ([3, 3, 5], "repeats an index"), ([-1, 2], r"holds \[-1\]"), ([0, 30], r"holds \[30\]"),
    ([1.0, 2], r"holds \[1.0\]"), (["4"], r"holds \['4'\]"), ([], "non-empty list")])
def test_a_resealed_split_with_bad_indices_is_refused(indices, message):
    split = resealed(make_split(LABELS, 6, 3, 0, "toy"), indices)
    with pytest.raises(SplitError, match=message):
        verify_split(split, "seed0.json", num_train=len(LABELS))


def test_the_workflow_checks_an_existing_split_before_it_plans_any_job(tmp_path, monkeypatch):
    """pipeline.workflow.inputs.check_existing_inputs, called when the Snakefile is read: before
    Snakemake plans a job, whether the runs that read the split ran already or not."""
    import hashlib
    import json
    from pathlib import Path

    from pipeline.config import ROOT, deep_merge, load_params, load_study
    from pipeline.workflow.inputs import check_existing_inputs

    monkeypatch.chdir(tmp_path)
    study = load_study(deep_merge(load_params(ROOT / "params.yaml"),
                                  {"study": {"n_labels": [10], "seeds": [0]}}))
    manifest = Path(study.manifest_path("digits"))
    manifest.parent.mkdir(parents=True)
    files = {"toy.npz": "0" * 64}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    manifest.write_text(json.dumps({
        "dataset": "toy", "options": {}, "num_classes": 3, "files": files,
        "shapes": {"train_images": [30, 1, 8, 8]}, "digest": digest}))
    check_existing_inputs(study)   # no split made yet: fine
    split = Path(study.split_path("digits", 10, 0))
    split.parent.mkdir(parents=True)
    made = {**make_split(LABELS, 6, 3, 0, "toy"), "dataset_digest": digest}
    split.write_text(json.dumps(made))
    check_existing_inputs(study)
    split.write_text(json.dumps(resealed(made, [0, 0, 1])))
    with pytest.raises(SplitError, match="repeats an index"):
        check_existing_inputs(study)
    split.write_text(json.dumps({**made, "dataset_digest": "0" * 64}))
    with pytest.raises(UserError, match="was made from other raw data"):
        check_existing_inputs(study)
