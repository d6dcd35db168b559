"""The embedded datasets: `digits` (8x8 gray) and `digits_rgb32`, the same images shaped like
CIFAR-10 for the GPU smoke study (configs/gpu-smoke.yaml), which must run without internet."""
from dataclasses import replace

import torch

from semisup.algorithms import build_algorithm
from semisup.data import get_dataset
from semisup.data.image import image_train_data
from semisup.data.splits import make_split
from semisup.models import build_network
from semisup.train import Trainer

from pipeline.config import default_params, default_train_options
from pipeline.runs.train import image_augment, train_config

DIGITS_OPTIONS = default_params()["datasets"]["digits"]


def test_rgb32_is_digits_with_each_pixel_repeated_4x4_in_3_channels(tmp_path):
    digits, rgb32 = get_dataset("digits"), get_dataset("digits_rgb32")
    digits.download(tmp_path, **DIGITS_OPTIONS)
    small, large = digits.load(tmp_path), rgb32.load(tmp_path)
    assert large.train_images.shape == (len(small.train_images), 3, 32, 32)
    assert rgb32.inputs.channels == 3 and large.train_images.dtype == torch.uint8
    assert torch.equal(large.train_labels, small.train_labels)
    assert torch.equal(large.test_labels, small.test_labels)
    for channel in range(3):   # every 4x4 block and every channel holds the 8x8 pixel
        assert torch.equal(large.test_images[:, channel, ::4, ::4], small.test_images[:, 0])
        assert torch.equal(large.test_images[:, channel, 3::4, 2::4], small.test_images[:, 0])
    # so the per-channel mean and std, and the normalisation constants, stay those of digits
    assert rgb32.inputs.mean == digits.inputs.mean * 3 and rgb32.inputs.std == digits.inputs.std * 3
    assert abs(large.train_images.float().mean() - small.train_images.float().mean()) < 1e-3


def test_wrn_28_2_trains_on_it_through_the_cifar_augmentation(tmp_path):
    """The smoke study's path on the CPU, shrunk: WRN-28-2 on 32x32x3 with 32 px crops and
    RandAugment, FixMatch, two steps."""
    spec = get_dataset("digits_rgb32")
    spec.download(tmp_path, **DIGITS_OPTIONS)
    data = spec.load(tmp_path)
    split = make_split(data.train_labels.numpy(), 20, 10, 0, "digits_rgb32")
    options = default_train_options("digits_rgb32", steps=2, batch_size=2, uratio=1, eval_every=2,
                                    log_every=1, checkpoint_every=2, last_k=1, channels_last=False)
    train_data = image_train_data(
        replace(data, test_images=data.test_images[:8], test_labels=data.test_labels[:8]),
        torch.tensor(split["labeled_indices"]), spec.inputs, image_augment(options), False,
        torch.device("cpu"))
    torch.manual_seed(0)
    model = build_network("wrn_28_2", 10, spec.inputs, variant="semilearn")
    before = model.classifier.weight.clone()
    algorithm = build_algorithm("fixmatch", {"tau": 0.0, "lambda_u": 1.0},
                                facts=train_data.facts(10), total_steps=2)
    result = Trainer(model, algorithm, train_data, train_config(options), 0,
                     torch.device("cpu")).fit()
    assert [point["step"] for point in result.curve] == [2.0]
    assert 0 <= result.metrics["ema/best_error"] <= 100
    assert result.stat_history[-1]["train/loss_unsup"] > 0   # the unlabeled branch ran
    assert not torch.equal(before, model.classifier.weight)
