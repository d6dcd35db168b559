"""The registered networks. Each WRN variant is one reference codebase's network: its parameter
count, BatchNorm epsilon and momentum, convolution biases and what feeds each path of a
projecting block are pinned here (benchmarks/reference_networks.py checks the PyTorch references
bit for bit against their own files)."""
import pytest
import torch
from torch import nn

from semisup.catalog import ImageInputs
from semisup.models import MODELS, Network, build_network
from semisup.models.wrn import VARIANTS, WideResNet


def image_inputs(channels: int = 3) -> ImageInputs:
    return ImageInputs(channels, (0.5,) * channels, (0.25,) * channels, horizontal_flip=True)


def build_model(name: str, num_classes: int, in_channels: int, **options) -> Network:
    return build_network(name, num_classes, image_inputs(in_channels), **options)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("name, num_classes, variant, expected", [
    # semilearn 0.3.2 (ALGORITHMS.md): no bias in the block convolutions.
    ("wrn_28_2", 10, "semilearn", 1_467_626),
    ("wrn_28_8", 100, "semilearn", 23_401_028),
    ("wrn_37_2", 10, "semilearn", 5_929_450),
    # USB before November 2022, TorchSSL and FixMatch-TF: every convolution has a bias.
    *[(name, classes, variant, count) for variant in ("semilearn_2022", "torchssl", "fixmatch_tf")
      for name, classes, count in (("wrn_28_2", 10, 1_469_642), ("wrn_28_8", 100, 23_409_092))],
    ("wrn_37_2", 10, "semilearn_2022", 5_933_770),
    ("wrn_37_2", 10, "torchssl", 5_933_770),
])
def test_parameter_count_is_the_reference_networks(name, num_classes, variant, expected):
    model = build_model(name, num_classes=num_classes, in_channels=3, variant=variant)
    assert count_parameters(model) == expected


@pytest.mark.parametrize("variant, block_eps", [("semilearn", 1e-5), ("semilearn_2022", 1e-3),
                                                ("torchssl", 1e-3), ("fixmatch_tf", 1e-3)])
def test_batchnorm_eps_and_momentum_follow_the_reference(variant, block_eps):
    model = build_model("wrn_28_2", num_classes=10, in_channels=3, variant=variant)
    block_norms = [m for m in model.backbone.groups.modules() if isinstance(m, nn.BatchNorm2d)]
    assert block_norms and all(m.eps == block_eps for m in block_norms)
    assert model.backbone.head[0].eps == 1e-3   # the BatchNorm before the classifier: 1e-3 everywhere
    assert all(m.momentum == 0.001 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    activations = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert activations and all(m.negative_slope == 0.1 for m in activations)


def test_convolution_biases_follow_the_reference():
    torch.manual_seed(0)
    semilearn = build_model("wrn_28_2", num_classes=10, in_channels=3, variant="semilearn")
    block_convs = [m for m in semilearn.backbone.groups.modules() if isinstance(m, nn.Conv2d)]
    assert all(conv.bias is None for conv in block_convs) and semilearn.backbone.stem.bias is not None
    for variant in ("semilearn_2022", "torchssl"):   # PyTorch's default uniform initialisation
        model = build_model("wrn_28_2", num_classes=10, in_channels=3, variant=variant)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all(conv.bias is not None and conv.bias.abs().sum() > 0 for conv in convs)
        bound = lambda conv: (conv.in_channels * conv.kernel_size[0] ** 2) ** -0.5
        assert all(conv.bias.abs().max() <= bound(conv) for conv in convs)
    tf = build_model("wrn_28_2", num_classes=10, in_channels=3, variant="fixmatch_tf")
    assert all(m.bias is not None and not m.bias.any() for m in tf.modules()
               if isinstance(m, nn.Conv2d))   # TensorFlow's conv2d starts at zero


def projecting_block_inputs(variant: str, group: int) -> tuple[str, str]:
    """What the first block of `group` feeds its residual (conv1) and shortcut paths: 'raw' (the
    block's input) or 'activated' (LeakyReLU(bn1(input)))."""
    torch.manual_seed(0)
    model = WideResNet(3, variant=variant, depth=10, widen_factor=2)
    block, seen = model.groups[group][0], {}
    block.conv1.register_forward_pre_hook(lambda m, args: seen.__setitem__("residual", args[0]))
    block.shortcut.register_forward_pre_hook(lambda m, args: seen.__setitem__("shortcut", args[0]))
    block.register_forward_pre_hook(lambda m, args: seen.__setitem__("input", args[0]))
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 16, 16))
        activated = block.activation(block.bn1(seen["input"]))
    kind = lambda x: "raw" if torch.equal(x, seen["input"]) else (
        "activated" if torch.equal(x, activated) else "other")
    return kind(seen["residual"]), kind(seen["shortcut"])


@pytest.mark.parametrize("variant, later_groups", [
    ("semilearn", ("raw", "raw")), ("torchssl", ("raw", "raw")),
    ("semilearn_2022", ("activated", "activated")), ("fixmatch_tf", ("activated", "raw"))])
def test_projecting_blocks_feed_each_path_as_the_reference(variant, later_groups):
    assert projecting_block_inputs(variant, 0) == ("activated", "activated")
    assert projecting_block_inputs(variant, 1) == later_groups


@pytest.mark.parametrize("name, size", [("wrn_28_2", 32), ("wrn_37_2", 96)])
def test_wide_resnet_gives_one_logit_per_class(name, size):
    model = build_model(name, num_classes=10, in_channels=3, variant="semilearn")
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size)).logits
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_wrn_37_2_has_four_groups_and_reaches_6x6_features_from_96_pixels():
    model = build_model("wrn_37_2", num_classes=10, in_channels=3, variant="torchssl")
    assert len(model.backbone.groups) == 4 and all(len(group) == 4 for group in model.backbone.groups)
    with torch.no_grad():
        features = model.backbone.groups(model.backbone.stem(torch.randn(1, 3, 96, 96)))
    assert features.shape == (1, 256, 6, 6)


def test_wide_resnet_accepts_other_input_channels():
    model = build_model("wrn_28_2", num_classes=3, in_channels=1, variant="semilearn")
    assert model(torch.randn(2, 1, 32, 32)).logits.shape == (2, 3)


def test_unknown_variant_bad_depth_and_a_network_the_reference_lacks_are_rejected():
    with pytest.raises(ValueError, match="variant must be one of"):
        WideResNet(3, variant="usb", depth=28, widen_factor=2)
    with pytest.raises(ValueError, match="6n"):
        WideResNet(3, variant="semilearn", depth=27, widen_factor=2)
    with pytest.raises(ValueError, match="no fixmatch_tf variant"):
        build_model("wrn_37_2", num_classes=10, in_channels=3, variant="fixmatch_tf")
    assert set(VARIANTS) == {"semilearn", "semilearn_2022", "torchssl", "fixmatch_tf"}


def test_small_cnn_gives_ten_logits_on_8x8_digits():
    model = MODELS["small_cnn"](num_classes=10, inputs=image_inputs(1), width=8, bn_momentum=0.01)
    assert model(torch.randn(4, 1, 8, 8)).logits.shape == (4, 10)


# ---- the network: backbone + classifier + named heads -------------------------------------------
def test_a_network_returns_logits_features_and_only_the_heads_asked_for():
    torch.manual_seed(0)
    network = build_model("small_cnn", num_classes=10, in_channels=1, width=4, bn_momentum=0.01)
    network.add_heads({"proj": nn.Linear(network.num_features, 5), "rot": nn.Linear(16, 4)})
    images = torch.randn(3, 1, 8, 8)
    plain = network(images)
    assert plain.heads == {} and plain.features.shape == (3, 16) and plain.logits.shape == (3, 10)
    asked = network(images, want=("proj",))
    assert set(asked.heads) == {"proj"} and asked.heads["proj"].shape == (3, 5)
    # the logits are the classifier of the features; a head reads the same features
    assert torch.equal(asked.logits, network.classifier(asked.features))
    assert torch.equal(asked.heads["proj"], network.heads["proj"](asked.features))
    with pytest.raises(ValueError, match="already has a head 'proj'"):
        network.add_heads({"proj": nn.Linear(16, 5)})


@pytest.mark.parametrize("name, options", [
    ("small_cnn", {"width": 4, "bn_momentum": 0.01}), ("cnn32", {"width": 4, "bn_momentum": 0.01}),
    ("wrn_28_2", {"variant": "semilearn"})])
def test_heads_are_parameters_of_the_network_after_the_backbone_and_classifier(name, options):
    """Heads train, are averaged and are checkpointed because they are the network's own
    parameters, registered after the backbone's and the classifier's (whose order the
    references' initialisation and the optimizer's groups follow)."""
    network = build_model(name, num_classes=10, in_channels=3, **options)
    before = [n for n, _ in network.named_parameters()]
    network.add_heads({"proj": nn.Linear(network.num_features, 8)})
    after = [n for n, _ in network.named_parameters()]
    assert after == [*before, "heads.proj.weight", "heads.proj.bias"]
    assert before[-2:] == ["classifier.weight", "classifier.bias"]
    assert "heads.proj.weight" in network.state_dict()
