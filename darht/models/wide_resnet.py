"""Wide ResNets (Zagoruyko & Komodakis 2016) for 32 px inputs, pre-activation blocks.

Widths 16, 16k, 32k, 64k for widen factor k; (depth - 4) / 6 blocks per group; group strides
1, 2, 2. In a block, when the channel count changes, the pre-activation a = act(bn(x)) feeds both
the conv path and the 1x1 projection shortcut; otherwise the identity shortcut takes raw x.

- `wrn-34-10`, `wrn-28-10`, `wrn-34-20` (ReLU): the layout of the TRADES / MART / FAT code and
  RobustBench's WideResNet (robustbench/model_zoo/architectures/wide_resnet.py): conv1,
  block{1,2,3}.layer.i.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc; stride-2 convs pad 1.
- `wrn-32-10` (ReLU): the same layout with depth counted as 6n + 2 (n = 5 blocks per group at
  depth 32, so it has the parameters of `wrn-34-10`): FAT's `Wide_ResNet_Madry`
  (zjfheart/Friendly-Adversarial-Training, models/wrn_madry.py), a PyTorch port of the network of
  Madry et al.'s CIFAR-10 challenge (MadryLab/cifar10_challenge, model.py: 5 residual units per
  stage, widths 16/160/320/640); the "WRN-32" of the paper's Table 5 (Madry, CAT, DAT, FAT rows).
  The original TensorFlow network differs (leaky ReLU 0.1, per-image standardization, avg-pool +
  zero-pad shortcuts); its checkpoints do not load here.
- `wrn-70-16`, `wrn-28-10-dm` (Swish): the layout of RobustBench's DeepMind WRNs (Gowal2020Uncovering,
  Rebuffi2021Fixing; robustbench/model_zoo/architectures/dm_wide_resnet.py):
  mean, std ([C,1,1] buffers), init_conv, layer.g.block.i.{batchnorm_0,conv_0,batchnorm_1,conv_1,
  shortcut}, batchnorm, logits. Its convs were trained with TensorFlow 'SAME' padding, so the
  3x3 conv_0 pads (1,1,1,1) at stride 1 but (0,1,0,1) (right/bottom only) at stride 2; the
  weights only reproduce the published accuracy with that padding.
Both pool globally (the original's avg_pool2d(8) is the same at 32 px) so other sizes work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from darht.errors import DarhtError
from darht.models.adapters import NormalizedNet
from darht.registry import MODELS

Stats = float | Sequence[float] | None
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise DarhtError(f"unknown activation '{name}'; choose from: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _blocks_per_group(name: str, depth: int, widen_factor: int, extra: int = 4) -> int:
    """(depth - extra) / 6 blocks per group: extra = 4 in the WRN paper's count (two convs per
    block, the stem conv, the classifier and a projection shortcut), 2 in Madry's count."""
    if depth < 6 + extra or (depth - extra) % 6 != 0:
        eg = "34, 28, 70, 10" if extra == 4 else "32, 26, 8"
        raise DarhtError(f"{name}: depth must be 6n + {extra} with n >= 1 (e.g. {eg}), got {depth}")
    if widen_factor < 1:
        raise DarhtError(f"{name}: widen_factor must be >= 1, got {widen_factor}")
    return (depth - extra) // 6


def _init(model: nn.Module) -> None:
    """He init (fan-out) for convs, zero linear bias: the WRN papers' initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# ---- wrn-34-10: TRADES layout --------------------------------------------------------------------
class WideBasic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module], drop_rate: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = act()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = act()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(a)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (self.convShortcut(a) if self.convShortcut is not None else x)


class WideGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, act: type[nn.Module], drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*[WideBasic(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                               act, drop_rate) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(NormalizedNet):
    def __init__(self, num_classes: int, in_chans: int = 3, depth: int = 34, widen_factor: int = 10,
                 activation: str = "relu", drop_rate: float = 0.0, mean: Stats = None, std: Stats = None,
                 name: str = "wrn-34-10", depth_extra: int = 4):
        super().__init__(in_chans, mean, std)
        n = _blocks_per_group(name, depth, widen_factor, depth_extra)
        act = _activation(activation)
        c = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, c[0], 3, padding=1, bias=False)
        self.block1 = WideGroup(n, c[0], c[1], 1, act, drop_rate)
        self.block2 = WideGroup(n, c[1], c[2], 2, act, drop_rate)
        self.block3 = WideGroup(n, c[2], c[3], 2, act, drop_rate)
        self.bn1 = nn.BatchNorm2d(c[3])
        self.relu = act()
        self.num_features = c[3]
        self.fc = nn.Linear(c[3], num_classes)
        _init(self)

    @property
    def classifier_head(self) -> nn.Module:
        return self.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(out)).mean(dim=(2, 3))  # [N, 64k]


# ---- wrn-70-16: DeepMind / RobustBench layout -----------------------------------------------------
def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding for a 3x3 kernel: symmetric at stride 1, right/bottom at stride 2."""
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class DMBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module]):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.relu_0 = act()
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride=stride, padding=0, bias=False)  # padded by hand
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if cin != cout else None
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(_same_pad(a, self.stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return out + (self.shortcut(a) if self.shortcut is not None else x)


class DMGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(*[DMBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, act)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(NormalizedNet):
    def __init__(self, num_classes: int, in_chans: int = 3, depth: int = 70, widen_factor: int = 16,
                 activation: str = "swish", mean: Stats = None, std: Stats = None, name: str = "wrn-70-16"):
        super().__init__(in_chans, mean, std)
        n = _blocks_per_group(name, depth, widen_factor)
        act = _activation(activation)
        c = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.init_conv = nn.Conv2d(in_chans, c[0], 3, padding=1, bias=False)
        self.layer = nn.Sequential(DMGroup(n, c[0], c[1], 1, act), DMGroup(n, c[1], c[2], 2, act),
                                   DMGroup(n, c[2], c[3], 2, act))
        self.batchnorm = nn.BatchNorm2d(c[3])
        self.relu = act()
        self.num_features = c[3]
        self.logits = nn.Linear(c[3], num_classes)
        _init(self)

    @property
    def classifier_head(self) -> nn.Module:
        return self.logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv(x))
        return self.relu(self.batchnorm(out)).mean(dim=(2, 3))  # [N, 64k]


@MODELS.register("wrn-34-10")
def wrn_34_10(num_classes: int, in_chans: int = 3, img_size: int = 32, *, depth: int = 34,
              widen_factor: int = 10, activation: str = "relu", drop_rate: float = 0.0,
              mean: Stats = None, std: Stats = None) -> WideResNet:
    return WideResNet(num_classes, in_chans, depth=depth, widen_factor=widen_factor, activation=activation,
                      drop_rate=drop_rate, mean=mean, std=std)


@MODELS.register("wrn-70-16")
def wrn_70_16(num_classes: int, in_chans: int = 3, img_size: int = 32, *, depth: int = 70,
              widen_factor: int = 16, activation: str = "swish", mean: Stats = None,
              std: Stats = None) -> DMWideResNet:
    return DMWideResNet(num_classes, in_chans, depth=depth, widen_factor=widen_factor, activation=activation,
                        mean=mean, std=std)


@MODELS.register("wrn-28-10")
def wrn_28_10(num_classes: int, in_chans: int = 3, img_size: int = 32, *, depth: int = 28,
              widen_factor: int = 10, activation: str = "relu", drop_rate: float = 0.0,
              mean: Stats = None, std: Stats = None) -> WideResNet:
    """WRN-28-10 in the TRADES / RobustBench layout (Carmon2019Unlabeled, Standard, ...)."""
    return WideResNet(num_classes, in_chans, depth=depth, widen_factor=widen_factor, activation=activation,
                      drop_rate=drop_rate, mean=mean, std=std, name="wrn-28-10")


@MODELS.register("wrn-34-20")
def wrn_34_20(num_classes: int, in_chans: int = 3, img_size: int = 32, *, depth: int = 34,
              widen_factor: int = 20, activation: str = "relu", drop_rate: float = 0.0,
              mean: Stats = None, std: Stats = None) -> WideResNet:
    """WRN-34-20 in the TRADES / RobustBench layout (Rice2020Overfitting, Chen2021LTD_WRN34_20)."""
    return WideResNet(num_classes, in_chans, depth=depth, widen_factor=widen_factor, activation=activation,
                      drop_rate=drop_rate, mean=mean, std=std, name="wrn-34-20")


@MODELS.register("wrn-32-10")
def wrn_32_10(num_classes: int, in_chans: int = 3, img_size: int = 32, *, depth: int = 32,
              widen_factor: int = 10, activation: str = "relu", drop_rate: float = 0.0,
              mean: Stats = None, std: Stats = None) -> WideResNet:
    """WRN-32-10 as FAT's `Wide_ResNet_Madry` counts it (depth 6n + 2; see the module docstring)."""
    return WideResNet(num_classes, in_chans, depth=depth, widen_factor=widen_factor, activation=activation,
                      drop_rate=drop_rate, mean=mean, std=std, name="wrn-32-10", depth_extra=2)


@MODELS.register("wrn-28-10-dm")
def wrn_28_10_dm(num_classes: int, in_chans: int = 3, img_size: int = 32, *, depth: int = 28,
                 widen_factor: int = 10, activation: str = "swish", mean: Stats = None,
                 std: Stats = None) -> DMWideResNet:
    """WRN-28-10 in the DeepMind layout, Swish (Gowal2020Uncovering_28_10_extra, Rebuffi2021Fixing_28_10_*)."""
    return DMWideResNet(num_classes, in_chans, depth=depth, widen_factor=widen_factor, activation=activation,
                        mean=mean, std=std, name="wrn-28-10-dm")
