"""`small-cnn`: a compact CNN for 8-64 px inputs (Fashion-MNIST, digits, quick CIFAR runs).

Three stages of 3x3 conv-BN-ReLU (widths w, 2w, 4w; max-pool between stages) and global average
pooling, so any img_size >= 8 works. Default w = 32: about 140k parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from darht.errors import DarhtError
from darht.models.adapters import NormalizedNet
from darht.registry import MODELS


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(NormalizedNet):
    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 32,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None):
        super().__init__(in_chans, mean, std)
        w = width
        self.stage1 = nn.Sequential(_conv_bn_relu(in_chans, w), _conv_bn_relu(w, w))
        self.stage2 = nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(w, 2 * w), _conv_bn_relu(2 * w, 2 * w))
        self.stage3 = nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(2 * w, 4 * w))
        self.num_features = 4 * w
        self.fc = nn.Linear(self.num_features, num_classes)

    @property
    def classifier_head(self) -> nn.Module:
        return self.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return x.mean(dim=(2, 3))  # global average pool: [N, 4w]


@MODELS.register("small-cnn")
def small_cnn(num_classes: int, in_chans: int = 3, img_size: int = 32, *, width: int = 32,
              mean: float | Sequence[float] | None = None,
              std: float | Sequence[float] | None = None) -> SmallCNN:
    if img_size < 8:
        raise DarhtError(f"small-cnn needs img_size >= 8, got {img_size}")
    if width < 1:
        raise DarhtError(f"small-cnn: width must be >= 1, got {width}")
    return SmallCNN(num_classes, in_chans, width=width, mean=mean, std=std)
