"""Small CNNs for small images: three conv blocks (BatchNorm, LeakyReLU 0.1) each.

  small_cnn  for the 8x8 digits: strided blocks, then global average pooling
  cnn32      for 32x32 images (e.g. an image_folder of your own): each block followed by 2x2 max
             pooling (32 -> 4 px), then a linear layer on the flattened 4x4 maps; it keeps where
             things are, which global pooling after two strides loses on 32x32 images
"""
from __future__ import annotations

from torch import nn

from ..catalog import ImageInputs
from .network import Network


def conv_block(in_channels: int, out_channels: int, stride: int, bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, momentum=bn_momentum),
        nn.LeakyReLU(0.1, inplace=True),
    )


class Features(nn.Sequential):
    """A backbone: layers in sequence, and how wide the features they end with are."""

    def __init__(self, *layers: nn.Module, num_features: int):
        super().__init__(*layers)
        self.num_features = num_features


def small_cnn(num_classes: int, inputs: ImageInputs, *, width: int, bn_momentum: float) -> Network:
    backbone = Features(conv_block(inputs.channels, width, 1, bn_momentum),
                        conv_block(width, 2 * width, 2, bn_momentum),
                        conv_block(2 * width, 4 * width, 2, bn_momentum),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), num_features=4 * width)
    return Network(backbone, nn.Linear(backbone.num_features, num_classes))


def cnn32(num_classes: int, inputs: ImageInputs, *, width: int, bn_momentum: float) -> Network:
    widths = [inputs.channels, width, 2 * width, 4 * width]
    blocks = [nn.Sequential(conv_block(widths[i], widths[i + 1], 1, bn_momentum), nn.MaxPool2d(2))
              for i in range(3)]
    backbone = Features(*blocks, nn.Flatten(), num_features=4 * width * 4 * 4)
    return Network(backbone, nn.Linear(backbone.num_features, num_classes))


MODELS = {"small_cnn": small_cnn, "cnn32": cnn32}
