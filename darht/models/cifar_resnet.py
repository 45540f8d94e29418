"""CIFAR-style ResNets: 3x3 stem, no max-pool, global average pooling (any img_size works).

- `resnet18`: post-activation basic blocks [2, 2, 2, 2] (He et al. 2016a). Key names follow the
  common CIFAR layout (conv1, bn1, layerK.i.{conv1,bn1,conv2,bn2,shortcut.0/.1}, linear), the one
  ARD/RSLAD students use.
- `preact-resnet18`: pre-activation basic blocks (He et al. 2016b) with a final BN-ReLU
  (conv1, layerK.i.{bn1,conv1,bn2,conv2,shortcut.0}, bn, linear), as in Madry-style AT code and
  RobustBench's CIFAR-100 Rice2020Overfitting / Addepalli2021Towards_PARN18. `final_bn=False,
  preact_shortcut=False` is RobustBench's default `PreActResNet(PreActBlock, [2, 2, 2, 2])`
  (robustbench/model_zoo/architectures/resnet.py; CIFAR-10 Wong2020Fast,
  Andriushchenko2020Understanding): no `bn` before the pool, and the 1x1 projection shortcut
  takes the block's raw input x instead of relu(bn1(x)).
- `preact-resnet18-dm`: the DeepMind pre-activation ResNet-18 (RobustBench's DMPreActResNet in
  robustbench/model_zoo/architectures/dm_wide_resnet.py; Rebuffi2021Fixing_R18_ddpm,
  Gowal2021Improving_R18_ddpm_100m): Swish, conv_2d, layer_{0..3}.i.{batchnorm_0,conv_2d_1,
  batchnorm_1,conv_2d_2,shortcut}, batchnorm, logits; TensorFlow 'SAME' padding (right/bottom
  only at stride 2), and its projection shortcut is a 3x3 conv on the raw (padded) input x.
- `resnet164`: pre-activation bottleneck ResNet for CIFAR, depth = 9n + 2 (n = 18 blocks per
  stage at depth 164), widths 16/32/64 x expansion 4 (conv1, layerK.i.{bn1,conv1,...,bn3,conv3,
  shortcut.0}, bn, fc).
`width` scales the channel counts (default 64 for the ResNet-18s, 16 for ResNet-164).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from darht.errors import DarhtError
from darht.models.adapters import NormalizedNet
from darht.models.wide_resnet import _activation, _same_pad
from darht.registry import MODELS

Stats = float | Sequence[float] | None


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Post-activation: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation: conv2(relu(bn2(conv1(a)))) + shortcut, a = relu(bn1 x); a projection
    shortcut (when the shape changes) takes `a` (or x with `preact_shortcut=False`), the
    identity takes x."""

    def __init__(self, cin: int, cout: int, stride: int, preact_shortcut: bool = True):
        super().__init__()
        self.preact_shortcut = preact_shortcut
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3(cout, cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv1(cin, cout, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a if self.preact_shortcut else x)
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + skip


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: 1x1 (planes) -> 3x3 (planes, stride) -> 1x1 (4 planes)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv1(cin, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1(planes, cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv1(cin, cout, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        skip = self.shortcut(a) if self.shortcut is not None else x
        out = self.conv1(a)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + skip


def _stage(block: type[nn.Module], cin: int, planes: int, n: int, stride: int,
           **block_kw: object) -> tuple[nn.Sequential, int]:
    """n blocks, the first with `stride`; returns (stage, output channels)."""
    expansion = getattr(block, "expansion", 1)
    layers = []
    for i in range(n):
        layers.append(block(cin, planes, stride if i == 0 else 1, **block_kw))
        cin = planes * expansion
    return nn.Sequential(*layers), cin


class ResNet18(NormalizedNet):
    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 64, mean: Stats = None,
                 std: Stats = None):
        super().__init__(in_chans, mean, std)
        self.conv1 = _conv3(in_chans, width)
        self.bn1 = nn.BatchNorm2d(width)
        c = width
        self.layer1, c = _stage(BasicBlock, c, width, 2, 1)
        self.layer2, c = _stage(BasicBlock, c, 2 * width, 2, 2)
        self.layer3, c = _stage(BasicBlock, c, 4 * width, 2, 2)
        self.layer4, c = _stage(BasicBlock, c, 8 * width, 2, 2)
        self.num_features = c
        self.linear = nn.Linear(c, num_classes)

    @property
    def classifier_head(self) -> nn.Module:
        return self.linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return out.mean(dim=(2, 3))  # [N, 8w]


class PreActResNet(NormalizedNet):
    """Pre-activation ResNet: stem conv, stages, final BN-ReLU, global pool, `classifier`."""

    def __init__(self, block: type[nn.Module], blocks: Sequence[int], planes: Sequence[int],
                 num_classes: int, in_chans: int, stem: int, head_name: str, mean: Stats, std: Stats,
                 final_bn: bool = True, **block_kw: object):
        super().__init__(in_chans, mean, std)
        self.conv1 = _conv3(in_chans, stem)
        c = stem
        for k, (n, p) in enumerate(zip(blocks, planes)):
            stage, c = _stage(block, c, p, n, 1 if k == 0 else 2, **block_kw)
            self.add_module(f"layer{k + 1}", stage)
        self.num_stages = len(blocks)
        # without the final BN-ReLU (RobustBench's bn_before_fc=False) the stages feed the pool as is
        self.bn = nn.BatchNorm2d(c) if final_bn else None
        self.num_features = c
        self._head_name = head_name  # 'linear' (PreActResNet-18) or 'fc' (ResNet-164): checkpoint names
        self.add_module(head_name, nn.Linear(c, num_classes))

    @property
    def classifier_head(self) -> nn.Module:
        return getattr(self, self._head_name)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for k in range(self.num_stages):
            out = getattr(self, f"layer{k + 1}")(out)
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return out.mean(dim=(2, 3))  # [N, C]


def _check_width(name: str, width: int) -> None:
    if width < 1:
        raise DarhtError(f"{name}: width must be >= 1, got {width}")


@MODELS.register("resnet18")
def resnet18(num_classes: int, in_chans: int = 3, img_size: int = 32, *, width: int = 64,
             mean: Stats = None, std: Stats = None) -> ResNet18:
    _check_width("resnet18", width)
    return ResNet18(num_classes, in_chans, width=width, mean=mean, std=std)


@MODELS.register("preact-resnet18")
def preact_resnet18(num_classes: int, in_chans: int = 3, img_size: int = 32, *, width: int = 64,
                    mean: Stats = None, std: Stats = None, final_bn: bool = True,
                    preact_shortcut: bool = True) -> PreActResNet:
    _check_width("preact-resnet18", width)
    return PreActResNet(PreActBlock, (2, 2, 2, 2), (width, 2 * width, 4 * width, 8 * width),
                        num_classes, in_chans, stem=width, head_name="linear", mean=mean, std=std,
                        final_bn=final_bn, preact_shortcut=preact_shortcut)


@MODELS.register("resnet164")
def resnet164(num_classes: int, in_chans: int = 3, img_size: int = 32, *, depth: int = 164,
              width: int = 16, mean: Stats = None, std: Stats = None) -> PreActResNet:
    if depth < 11 or (depth - 2) % 9 != 0:
        raise DarhtError(f"resnet164: depth must be 9n + 2 with n >= 1 (e.g. 164, 110, 20), got {depth}")
    _check_width("resnet164", width)
    n = (depth - 2) // 9
    return PreActResNet(PreActBottleneck, (n, n, n), (width, 2 * width, 4 * width),
                        num_classes, in_chans, stem=width, head_name="fc", mean=mean, std=std)


# ---- preact-resnet18-dm: DeepMind / RobustBench layout ---------------------------------------------
class DMPreActBlock(nn.Module):
    """a = act(batchnorm_0 x); conv_2d_2(act(batchnorm_1(conv_2d_1(pad a)))) + shortcut, where the
    shortcut (stride != 1 or a channel change) is a 3x3 conv on the padded raw input x."""

    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module]):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.relu_0 = act()
        self.conv_2d_1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=0, bias=False)  # padded by hand
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.relu_1 = act()
        self.conv_2d_2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 3, stride=stride, padding=0, bias=False)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu_0(self.batchnorm_0(x))
        skip = x if self.shortcut is None else self.shortcut(_same_pad(x, self.stride))
        out = self.conv_2d_1(_same_pad(a, self.stride))
        return self.conv_2d_2(self.relu_1(self.batchnorm_1(out))) + skip


class DMPreActResNet(NormalizedNet):
    def __init__(self, num_classes: int, in_chans: int = 3, depth: int = 18, width: int = 64,
                 activation: str = "swish", mean: Stats = None, std: Stats = None):
        super().__init__(in_chans, mean, std)
        blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}.get(depth)
        if blocks is None:
            raise DarhtError(f"preact-resnet18-dm: depth must be 18 or 34, got {depth}")
        act = _activation(activation)
        self.conv_2d = _conv3(in_chans, width)
        c = width
        for k, n in enumerate(blocks):
            cout = width * 2 ** k
            self.add_module(f"layer_{k}", nn.Sequential(*[
                DMPreActBlock(c if i == 0 else cout, cout, (1 if k == 0 else 2) if i == 0 else 1, act)
                for i in range(n)]))
            c = cout
        self.batchnorm = nn.BatchNorm2d(c)
        self.relu = act()
        self.num_features = c
        self.logits = nn.Linear(c, num_classes)

    @property
    def classifier_head(self) -> nn.Module:
        return self.logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_2d(x)
        for k in range(4):
            out = getattr(self, f"layer_{k}")(out)
        return self.relu(self.batchnorm(out)).mean(dim=(2, 3))  # [N, 8w]


@MODELS.register("preact-resnet18-dm")
def preact_resnet18_dm(num_classes: int, in_chans: int = 3, img_size: int = 32, *, depth: int = 18,
                       width: int = 64, activation: str = "swish", mean: Stats = None,
                       std: Stats = None) -> DMPreActResNet:
    _check_width("preact-resnet18-dm", width)
    return DMPreActResNet(num_classes, in_chans, depth=depth, width=width, activation=activation,
                          mean=mean, std=std)
