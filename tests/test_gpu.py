"""CUDA only (skipped without a GPU): the training step of every algorithm makes no host
synchronisation (issue 6: nothing read back in the hot loop), with the paper settings (bf16
autocast, channels_last) on WRN-28-2 at the CIFAR shape (digits_rgb32, offline)."""
import pytest
import torch

from semisup.algorithms import ALGORITHMS, build_algorithm
from semisup.data import get_dataset
from semisup.data.splits import make_split
from semisup.models import build_model
from semisup.train import TrainConfig, TrainData, Trainer

from pipeline.config import default_params, default_train_options

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    spec = get_dataset("digits_rgb32")
    root = tmp_path_factory.mktemp("digits_rgb32")
    spec.download(root, **default_params()["datasets"]["digits"])
    raw = spec.load(root)
    split = make_split(raw.train_labels.numpy(), 40, 10, 0, "digits_rgb32")
    return spec, TrainData(train_images=raw.train_images.to(CUDA),
                           train_labels=raw.train_labels.to(CUDA),
                           labeled_indices=torch.tensor(split["labeled_indices"], device=CUDA),
                           test_images=raw.test_images[:64].to(CUDA),
                           test_labels=raw.test_labels[:64].to(CUDA), mean=spec.mean, std=spec.std)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_training_step_makes_no_host_synchronisation(data, name):
    _, train_data = data
    config = TrainConfig(**default_train_options("digits_rgb32", steps=100, batch_size=8, uratio=2,
                                                 precision="bf16", channels_last=True))
    params = {**default_params()["algorithms"][name],
              **{"dash": {"warmup_steps": 1, "steps_per_epoch": 2, "warmup_epochs": 1}}.get(name, {})}
    torch.manual_seed(0)
    algorithm = build_algorithm(name, params, num_classes=10,
                                num_unlabeled=len(train_data.train_images),
                                num_labeled=len(train_data.labeled_indices), total_steps=100)
    model = build_model("wrn_28_2", 10, 3, variant="semilearn")
    trainer = Trainer(model, algorithm, train_data, config, 0, CUDA)
    trainer.model.train()
    for _ in range(3):   # first steps: allocations, cuDNN heuristics, lazily made buffers
        trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            stats = trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(value.is_cuda for value in stats.values())
    assert torch.isfinite(stats["loss"]).item()
