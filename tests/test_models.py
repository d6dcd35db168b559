"""The registered networks: sizes against the published figures, output shapes, and the details
of the classic protocol (BatchNorm momentum 0.001, LeakyReLU 0.1)."""
import pytest
import torch
from torch import nn

from semisup.models import MODELS, build_model
from semisup.models.wrn import WideResNet


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("name, num_classes, expected", [
    # FixMatch/MixMatch: "WRN-28-2 with 1.5M parameters" (1.47M as PyTorch ports print it).
    ("wrn_28_2", 10, 1_469_642),
    # WRN-28-8 for CIFAR-100: 23.4M in the FixMatch/FlexMatch/USB tables.
    ("wrn_28_8", 100, 23_409_092),
    # WRN-37-2 for STL-10: 5.9M. Equal to USB's wrn_var_37_2 built with 10 classes.
    ("wrn_37_2", 10, 5_933_770),
])
def test_parameter_count_matches_the_published_network(name, num_classes, expected):
    assert count_parameters(build_model(name, num_classes=num_classes, in_channels=3)) == expected


@pytest.mark.parametrize("name, size", [("wrn_28_2", 32), ("wrn_37_2", 96)])
def test_wide_resnet_gives_one_logit_per_class(name, size):
    model = build_model(name, num_classes=10, in_channels=3)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_wrn_37_2_has_four_groups_and_reaches_6x6_features_from_96_pixels():
    model = build_model("wrn_37_2", num_classes=10, in_channels=3)
    assert len(model.groups) == 4 and all(len(group) == 4 for group in model.groups)
    with torch.no_grad():
        features = model.groups(model.stem(torch.randn(1, 3, 96, 96)))
    assert features.shape == (1, 256, 6, 6)


def test_wide_resnet_uses_batchnorm_momentum_0001_and_leaky_relu_01():
    model = build_model("wrn_28_2", num_classes=10, in_channels=3)
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    activations = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert batch_norms and all(m.momentum == 0.001 and m.eps == 1e-3 for m in batch_norms)
    assert activations and all(m.negative_slope == 0.1 for m in activations)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_wide_resnet_accepts_other_input_channels():
    model = build_model("wrn_28_2", num_classes=3, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def projecting_block_gradients(block_variant: str) -> tuple[bool, bool]:
    """Whether the first BatchNorm of group 1's and group 2's first block receives a gradient."""
    model = WideResNet(num_classes=2, depth=10, widen_factor=1, block_variant=block_variant)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    return tuple(model.groups[g][0].bn1.weight.grad is not None for g in (0, 1))


def test_block_variants_differ_only_in_what_feeds_the_projecting_blocks():
    assert projecting_block_gradients("usb") == (True, True)
    assert projecting_block_gradients("fixmatch") == (True, True)
    # TorchSSL/FixMatch-pytorch feed the raw input to both paths after the first group.
    assert projecting_block_gradients("torchssl") == (True, False)
    torch.manual_seed(0)
    usb = WideResNet(num_classes=2, depth=10, widen_factor=1, block_variant="usb")
    fixmatch = WideResNet(num_classes=2, depth=10, widen_factor=1, block_variant="fixmatch")
    fixmatch.load_state_dict(usb.state_dict())
    images = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(usb(images), fixmatch(images))


def test_unknown_block_variant_and_bad_depth_are_rejected():
    with pytest.raises(ValueError, match="block_variant"):
        WideResNet(num_classes=2, block_variant="tf")
    with pytest.raises(ValueError, match="6n"):
        WideResNet(num_classes=2, depth=27)


def test_small_cnn_gives_ten_logits_on_8x8_digits():
    model = MODELS["small_cnn"](num_classes=10, in_channels=1)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
