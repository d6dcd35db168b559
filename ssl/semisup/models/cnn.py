"""A small CNN for the 8x8 digits: three conv blocks (BatchNorm, LeakyReLU 0.1), global pooling."""
from __future__ import annotations

from torch import nn


def conv_block(in_channels: int, out_channels: int, stride: int, bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, momentum=bn_momentum),
        nn.LeakyReLU(0.1, inplace=True),
    )


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, *, width: int, bn_momentum: float):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(in_channels, width, 1, bn_momentum),
            conv_block(width, 2 * width, 2, bn_momentum),
            conv_block(2 * width, 4 * width, 2, bn_momentum),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, images):
        return self.classifier(self.features(images))


MODELS = {"small_cnn": SmallCNN}
