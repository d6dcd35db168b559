"""Wide ResNets of the classic semi-supervised CV protocol: WRN-28-2 (CIFAR-10, SVHN), WRN-28-8
(CIFAR-100) and WRN-37-2 (STL-10, 96 px; four groups of four blocks, as USB's `wrn_var_37_2`).

Pre-activation basic blocks, BatchNorm momentum 0.001 and epsilon 0.001 (TensorFlow's defaults,
kept by FixMatch, TorchSSL and USB), LeakyReLU 0.1, convolutions with biases, He-normal (fan-out)
convolution weights and Xavier-normal classifier weights.

The references disagree on what feeds a block whose shortcut is a 1x1 projection (the first block
of each group); `block_variant` picks one:
- "fixmatch" (the official TensorFlow code): the residual path always sees the pre-activated input;
  the shortcut sees it only in the first group ("activate before residual"), elsewhere the raw input.
- "usb" (semilearn 0.3.2): both paths see the pre-activated input in every group.
- "torchssl" (TorchSSL, FixMatch-pytorch and the Dash code built on it): as "fixmatch" in the first
  group; in later groups both paths see the raw input, so that block's first BatchNorm is unused.
The parameter count is the same in all three.
"""
from __future__ import annotations

from torch import Tensor, nn

BLOCK_VARIANTS = ("fixmatch", "usb", "torchssl")


class PreActBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_momentum: float,
                 leaky_slope: float, activated_shortcut: bool = True, raw_residual_input: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, momentum=bn_momentum, eps=1e-3)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=bn_momentum, eps=1e-3)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.activation = nn.LeakyReLU(leaky_slope)
        projects = in_channels != out_channels or stride != 1
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if projects else None
        # Only a projecting block has a choice: an identity shortcut always carries the raw input.
        self.activated_shortcut = projects and activated_shortcut
        self.raw_residual_input = projects and raw_residual_input

    def forward(self, x: Tensor) -> Tensor:
        activated = self.activation(self.bn1(x))
        residual = self.conv1(x if self.raw_residual_input else activated)
        residual = self.conv2(self.activation(self.bn2(residual)))
        if self.shortcut is None:
            return x + residual
        return self.shortcut(activated if self.activated_shortcut else x) + residual


def make_group(in_channels: int, out_channels: int, num_blocks: int, stride: int, first_group: bool,
               block_variant: str, bn_momentum: float, leaky_slope: float) -> nn.Sequential:
    activated_shortcut = first_group or block_variant == "usb"
    raw_residual_input = block_variant == "torchssl" and not first_group
    blocks = [PreActBlock(in_channels, out_channels, stride, bn_momentum, leaky_slope,
                          activated_shortcut, raw_residual_input)]
    blocks += [PreActBlock(out_channels, out_channels, 1, bn_momentum, leaky_slope)
               for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class WideResNet(nn.Module):
    """A 3x3 stem with 16 channels, `num_groups` groups of (depth - 4) / 6 blocks with
    16 * widen_factor * 2^g channels (stride `first_stride`, then 2), BatchNorm + LeakyReLU,
    global average pooling and a linear classifier."""

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 28, widen_factor: int = 2,
                 num_groups: int = 3, first_stride: int = 1, bn_momentum: float = 0.001,
                 leaky_slope: float = 0.1, block_variant: str = "usb"):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        if block_variant not in BLOCK_VARIANTS:
            raise ValueError(f"block_variant must be one of {BLOCK_VARIANTS}, got {block_variant!r}")
        num_blocks = (depth - 4) // 6
        widths = [16] + [16 * widen_factor * 2 ** group for group in range(num_groups)]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1)
        self.groups = nn.Sequential(*[
            make_group(widths[g], widths[g + 1], num_blocks, first_stride if g == 0 else 2,
                       g == 0, block_variant, bn_momentum, leaky_slope)
            for g in range(num_groups)
        ])
        self.head = nn.Sequential(
            nn.BatchNorm2d(widths[-1], momentum=bn_momentum, eps=1e-3),
            nn.LeakyReLU(leaky_slope),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)  # as TensorFlow's conv2d in the FixMatch code
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.head(self.groups(self.stem(images))))


def wrn_28_2(num_classes: int, in_channels: int = 3, **options) -> WideResNet:
    return WideResNet(num_classes, in_channels, **{"depth": 28, "widen_factor": 2, **options})


def wrn_28_8(num_classes: int, in_channels: int = 3, **options) -> WideResNet:
    return WideResNet(num_classes, in_channels, **{"depth": 28, "widen_factor": 8, **options})


def wrn_37_2(num_classes: int, in_channels: int = 3, **options) -> WideResNet:
    """USB/TorchSSL's STL-10 network: depth-28 blocks in four groups (32..256 channels), the first
    group already at stride 2 (96 -> 48 -> 24 -> 12 -> 6 px)."""
    defaults = {"depth": 28, "widen_factor": 2, "num_groups": 4, "first_stride": 2}
    return WideResNet(num_classes, in_channels, **{**defaults, **options})
