"""Wide ResNets of the classic semi-supervised CV protocol: WRN-28-2 (CIFAR-10, SVHN), WRN-28-8
(CIFAR-100) and WRN-37-2 (STL-10, 96 px: four groups of four blocks, the first at stride 2, as
semilearn's and TorchSSL's `wrn_var_37_2`).

Each `variant` is one reference codebase's network, exactly: its structure, BatchNorm epsilon and
momentum, convolution biases and their initialisation, and so its parameter count. They share
pre-activation basic blocks, BatchNorm momentum 0.001 (TensorFlow's decay 0.999), LeakyReLU 0.1,
He-normal (fan-out) convolution weights, a Xavier-normal classifier with a zero bias, and the
order in which modules are built and initialised (so that the PyTorch references' initial
weights are drawn from the same random numbers). They differ in what feeds the two paths of a
block whose shortcut is a 1x1 projection (the first block of each group), and in the details:

  variant         projecting block, group 1    projecting block, groups 2+   BN eps      conv bias
  semilearn       both paths pre-activated     both paths raw input          1e-5 (a)    none (b)
  semilearn_2022  both paths pre-activated     both paths pre-activated      1e-3        PyTorch init
  torchssl        both paths pre-activated     both paths raw input          1e-3        PyTorch init
  fixmatch_tf     both paths pre-activated     residual pre-activated,       1e-3        zeros
                                               shortcut raw input
  (a) 1e-3 in the BatchNorm before the classifier.  (b) only the stem convolution has a bias.

- `semilearn`: semilearn 0.3.2 (USB as released; `semilearn/nets/wrn/wrn.py`, `wrn_var.py`).
  Where the raw input feeds both paths, the block's first BatchNorm is never used; semilearn
  still computes it (updating its running statistics, which reach no output), this code skips it.
- `semilearn_2022`: USB's network before its "update network" commit of 20 November 2022
  (7c7460f), which the first USB results were trained with.
- `torchssl`: TorchSSL (`models/nets/wrn.py`, `wrn_var.py`), the code of the FlexMatch paper.
- `fixmatch_tf`: the official FixMatch TensorFlow code (`libml/models.py`, `ResNet`), on which
  the official Dash code runs; its kernels are drawn from N(0, 2 / fan_out) and biases start at
  zero, as here (TensorFlow's own random numbers cannot be reproduced). It defines no WRN-37-2:
  for 96 px images it builds a five-scale network, so `wrn_37_2` refuses this variant.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..catalog import ImageInputs
from .network import Network


@dataclass(frozen=True)
class Variant:
    """What distinguishes one reference codebase's WRN."""

    activate_later_shortcuts: bool   # projecting blocks of groups 2+: shortcut sees the activation
    activate_later_residuals: bool   # ... and the residual path does
    block_eps: float                 # BatchNorm epsilon inside the blocks
    block_conv_bias: bool
    zero_conv_bias: bool             # False: PyTorch's default uniform initialisation is kept


VARIANTS = {
    "semilearn": Variant(False, False, block_eps=1e-5, block_conv_bias=False, zero_conv_bias=False),
    "semilearn_2022": Variant(True, True, block_eps=1e-3, block_conv_bias=True, zero_conv_bias=False),
    "torchssl": Variant(False, False, block_eps=1e-3, block_conv_bias=True, zero_conv_bias=False),
    "fixmatch_tf": Variant(False, True, block_eps=1e-3, block_conv_bias=True, zero_conv_bias=True),
}
BN_MOMENTUM = 0.001      # PyTorch convention; TensorFlow's decay 0.999
HEAD_EPS = 1e-3          # the BatchNorm before the classifier, in every variant
LEAKY_SLOPE = 0.1


class PreActBlock(nn.Module):
    """A pre-activation basic block. A projecting block (other width or stride) feeds each of its
    two paths either the pre-activated input or the raw input; an identity block always adds the
    raw input to a residual computed from the pre-activated input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, variant: Variant,
                 activated_shortcut: bool, activated_residual: bool):
        super().__init__()
        bias = variant.block_conv_bias
        # Built in the references' order: their initial weights come from the same draws.
        self.bn1 = nn.BatchNorm2d(in_channels, eps=variant.block_eps, momentum=BN_MOMENTUM)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=variant.block_eps, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=bias)
        self.activation = nn.LeakyReLU(LEAKY_SLOPE)
        projects = in_channels != out_channels or stride != 1
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)
                         if projects else None)
        self.activated_shortcut = projects and activated_shortcut
        self.activated_residual = not projects or activated_residual

    def forward(self, x: Tensor) -> Tensor:
        needs_activation = self.activated_residual or self.activated_shortcut
        activated = self.activation(self.bn1(x)) if needs_activation else None
        residual = self.conv1(activated if self.activated_residual else x)
        residual = self.conv2(self.activation(self.bn2(residual)))
        if self.shortcut is None:
            return x + residual
        return self.shortcut(activated if self.activated_shortcut else x) + residual


class WideResNet(nn.Module):
    """The backbone: a 3x3 stem with 16 channels (with a bias), `num_groups` groups of
    (depth - 4) / 6 blocks with 16 * widen_factor * 2^g channels (stride `first_stride`, then 2),
    BatchNorm + LeakyReLU and global average pooling: one feature vector per image."""

    def __init__(self, in_channels: int, *, variant: str, depth: int, widen_factor: int,
                 num_groups: int = 3, first_stride: int = 1):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"WideResNet variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        self.variant = VARIANTS[variant]
        num_blocks = (depth - 4) // 6
        widths = [16] + [16 * widen_factor * 2 ** group for group in range(num_groups)]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=True)
        self.groups = nn.Sequential(*[
            self._group(widths[g], widths[g + 1], num_blocks, first_stride if g == 0 else 2, g == 0)
            for g in range(num_groups)])
        self.head = nn.Sequential(nn.BatchNorm2d(widths[-1], eps=HEAD_EPS, momentum=BN_MOMENTUM),
                                  nn.LeakyReLU(LEAKY_SLOPE), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = widths[-1]

    def _group(self, in_channels: int, out_channels: int, num_blocks: int, stride: int,
               first_group: bool) -> nn.Sequential:
        variant = self.variant
        blocks = [PreActBlock(in_channels, out_channels, stride, variant,
                              activated_shortcut=first_group or variant.activate_later_shortcuts,
                              activated_residual=first_group or variant.activate_later_residuals)]
        blocks += [PreActBlock(out_channels, out_channels, 1, variant, True, True)
                   for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.groups(self.stem(images)))


def reset_parameters(network: nn.Module, variant: Variant) -> None:
    """The references' initialisation, module by module in construction order (backbone, then
    classifier: the order in which the references build them, so the same random draws)."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
            if module.bias is not None and variant.zero_conv_bias:
                nn.init.zeros_(module.bias)   # TensorFlow's conv2d starts its bias at zero
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)


def wide_resnet(num_classes: int, inputs: ImageInputs, **options) -> Network:
    """The backbone, a linear classifier on its features, the references' initialisation."""
    backbone = WideResNet(inputs.channels, **options)
    network = Network(backbone, nn.Linear(backbone.num_features, num_classes))
    reset_parameters(network, backbone.variant)
    return network


def wrn_28_2(num_classes: int, inputs: ImageInputs, *, variant: str) -> Network:
    return wide_resnet(num_classes, inputs, variant=variant, depth=28, widen_factor=2)


def wrn_28_8(num_classes: int, inputs: ImageInputs, *, variant: str) -> Network:
    return wide_resnet(num_classes, inputs, variant=variant, depth=28, widen_factor=8)


def wrn_37_2(num_classes: int, inputs: ImageInputs, *, variant: str) -> Network:
    """semilearn's and TorchSSL's STL-10 network `wrn_var_37_2`: depth-28 blocks in four groups
    (32..256 channels), the first already at stride 2 (96 -> 48 -> 24 -> 12 -> 6 px)."""
    if variant == "fixmatch_tf":
        raise ValueError("wrn_37_2 has no fixmatch_tf variant: the FixMatch TensorFlow code "
                         "defines no WRN-37-2 (for 96 px images it builds a five-scale ResNet); "
                         "use semilearn, semilearn_2022 or torchssl")
    return wide_resnet(num_classes, inputs, variant=variant, depth=28, widen_factor=2,
                       num_groups=4, first_stride=2)


MODELS = {"wrn_28_2": wrn_28_2, "wrn_28_8": wrn_28_8, "wrn_37_2": wrn_37_2}
