"""RobustBench teachers by name: the table, the key layouts, loading by NAME=PATH and from YAML,
`darht data fetch-teacher`, and one-line errors.

The expected state-dict keys and the reference forwards below are written from the layouts as
RobustBench defines them (robustbench/model_zoo/architectures/{wide_resnet,dm_wide_resnet,resnet}.py,
model_zoo/cifar10.py, cifar100.py) and FAT's models/wrn_madry.py, not from darht's modules, so a
darht model with other keys, shapes, padding, shortcuts or normalization fails here. Big networks
are checked key-for-key on the meta device; weights are loaded into reduced depths/widths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from darht.cli import main
from darht.config import check_run, load_yaml, make_config
from darht.errors import DarhtError
from darht.methods.base import teacher_specs
from darht.models import robustbench as rb
from darht.models.teachers import load_teacher
from darht.registry import METHODS

C10_MEAN, C10_STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
C100_MEAN, C100_STD = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]
C100_RICE_MEAN = [0.5070751592371323, 0.48654887331495095, 0.4409178433670343]
C100_RICE_STD = [0.2673342858792401, 0.2564384629170883, 0.27615047132568404]


# ---- the layouts, written from RobustBench's definitions --------------------------------------------
def _bn(p: str, c: int) -> dict:
    return {f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,), f"{p}.running_var": (c,),
            f"{p}.num_batches_tracked": ()}


def _conv(p: str, cout: int, cin: int, k: int) -> dict:
    return {f"{p}.weight": (cout, cin, k, k)}


def _fc(p: str, cout: int, cin: int) -> dict:
    return {f"{p}.weight": (cout, cin), f"{p}.bias": (cout,)}


def trades_keys(depth: int, widen: int, classes: int, sub_block1: bool = False, extra: int = 4) -> dict:
    """TRADES WideResNet: conv1; block{1,2,3}.layer.i.{bn1,conv1,bn2,conv2[,convShortcut]}; bn1; fc.
    (depth - extra) / 6 blocks per group (extra = 2 for FAT's Wide_ResNet_Madry)."""
    n, ch = (depth - extra) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
    keys = _conv("conv1", 16, 3, 3)
    groups = [("block1", 1), ("block2", 2), ("block3", 3)] + ([("sub_block1", 1)] if sub_block1 else [])
    for name, g in groups:
        for i in range(n):
            cin, cout, p = ch[g - 1] if i == 0 else ch[g], ch[g], f"{name}.layer.{i}"
            keys |= _bn(f"{p}.bn1", cin) | _conv(f"{p}.conv1", cout, cin, 3) | _bn(f"{p}.bn2", cout)
            keys |= _conv(f"{p}.conv2", cout, cout, 3)
            if cin != cout:
                keys |= _conv(f"{p}.convShortcut", cout, cin, 1)
    return keys | _bn("bn1", ch[3]) | _fc("fc", classes, ch[3])


def dm_wrn_keys(depth: int, widen: int, classes: int) -> dict:
    """DMWideResNet: init_conv; layer.g.block.i.{batchnorm_0,conv_0,batchnorm_1,conv_1[,shortcut]};
    batchnorm; logits (mean/std are non-persistent buffers: not in the checkpoint)."""
    n, ch = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
    keys = _conv("init_conv", 16, 3, 3)
    for g in range(3):
        for i in range(n):
            cin, cout, p = ch[g] if i == 0 else ch[g + 1], ch[g + 1], f"layer.{g}.block.{i}"
            keys |= _bn(f"{p}.batchnorm_0", cin) | _conv(f"{p}.conv_0", cout, cin, 3)
            keys |= _bn(f"{p}.batchnorm_1", cout) | _conv(f"{p}.conv_1", cout, cout, 3)
            if cin != cout:
                keys |= _conv(f"{p}.shortcut", cout, cin, 1)
    return keys | _bn("batchnorm", ch[3]) | _fc("logits", classes, ch[3])


def preact_keys(classes: int, width: int = 64, final_bn: bool = False) -> dict:
    """PreActResNet(PreActBlock, [2,2,2,2]): conv1; layerK.i.{bn1,conv1,bn2,conv2[,shortcut.0]};
    bn only with bn_before_fc; linear."""
    keys, cin = _conv("conv1", width, 3, 3), width
    for k in range(4):
        cout = width * 2 ** k
        for i in range(2):
            stride, p = (1 if k == 0 else 2) if i == 0 else 1, f"layer{k + 1}.{i}"
            keys |= _bn(f"{p}.bn1", cin) | _conv(f"{p}.conv1", cout, cin, 3) | _bn(f"{p}.bn2", cout)
            keys |= _conv(f"{p}.conv2", cout, cout, 3)
            if stride != 1 or cin != cout:
                keys |= _conv(f"{p}.shortcut.0", cout, cin, 1)
            cin = cout
    return keys | (_bn("bn", cin) if final_bn else {}) | _fc("linear", classes, cin)


def dm_preact_keys(classes: int, width: int = 64) -> dict:
    """DMPreActResNet-18: conv_2d; layer_k.i.{batchnorm_0,conv_2d_1,batchnorm_1,conv_2d_2[,shortcut
    (3x3)]}; batchnorm; logits."""
    keys, cin = _conv("conv_2d", width, 3, 3), width
    for k in range(4):
        cout = width * 2 ** k
        for i in range(2):
            stride, p = (1 if k == 0 else 2) if i == 0 else 1, f"layer_{k}.{i}"
            keys |= _bn(f"{p}.batchnorm_0", cin) | _conv(f"{p}.conv_2d_1", cout, cin, 3)
            keys |= _bn(f"{p}.batchnorm_1", cout) | _conv(f"{p}.conv_2d_2", cout, cout, 3)
            if stride != 1 or cin != cout:
                keys |= _conv(f"{p}.shortcut", cout, cin, 3)
            cin = cout
    return keys | _bn("batchnorm", cin) | _fc("logits", classes, cin)


def resnet18_keys(classes: int, width: int = 64) -> dict:
    """ResNet(BasicBlock, [2,2,2,2]): conv1; bn1; layerK.i.{conv1,bn1,conv2,bn2[,shortcut.0,shortcut.1]};
    linear."""
    keys, cin = _conv("conv1", width, 3, 3) | _bn("bn1", width), width
    for k in range(4):
        cout = width * 2 ** k
        for i in range(2):
            stride, p = (1 if k == 0 else 2) if i == 0 else 1, f"layer{k + 1}.{i}"
            keys |= _conv(f"{p}.conv1", cout, cin, 3) | _bn(f"{p}.bn1", cout)
            keys |= _conv(f"{p}.conv2", cout, cout, 3) | _bn(f"{p}.bn2", cout)
            if stride != 1 or cin != cout:
                keys |= _conv(f"{p}.shortcut.0", cout, cin, 1) | _bn(f"{p}.shortcut.1", cout)
            cin = cout
    return keys | _fc("linear", classes, cin)


def random_state(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("running_mean", ".bias")):
            out[k] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # BN weight
            out[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:  # conv/linear weight, He-scaled so activations stay O(1)
            fan_in = math.prod(shape[1:])
            out[k] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    return out


# ---- reference forwards (RobustBench's forward passes, functionally) --------------------------------
def _bnf(sd, p, x):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def _same(x, stride):
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


def ref_trades(sd, x, n):
    h = F.conv2d(x, sd["conv1.weight"], padding=1)
    for g in (1, 2, 3):
        for i in range(n):
            p, s = f"block{g}.layer.{i}", (1 if g == 1 else 2) if i == 0 else 1
            a = F.relu(_bnf(sd, f"{p}.bn1", h))
            skip = F.conv2d(a, sd[f"{p}.convShortcut.weight"], stride=s) if f"{p}.convShortcut.weight" in sd else h
            o = F.relu(_bnf(sd, f"{p}.bn2", F.conv2d(a, sd[f"{p}.conv1.weight"], stride=s, padding=1)))
            h = F.conv2d(o, sd[f"{p}.conv2.weight"], padding=1) + skip
    h = F.relu(_bnf(sd, "bn1", h)).mean((2, 3))
    return F.linear(h, sd["fc.weight"], sd["fc.bias"])


def ref_dm_wrn(sd, x, n):
    h = F.conv2d(x, sd["init_conv.weight"], padding=1)
    for g in range(3):
        for i in range(n):
            p, s = f"layer.{g}.block.{i}", (1 if g == 0 else 2) if i == 0 else 1
            a = F.silu(_bnf(sd, f"{p}.batchnorm_0", h))
            skip = F.conv2d(a, sd[f"{p}.shortcut.weight"], stride=s) if f"{p}.shortcut.weight" in sd else h
            o = F.silu(_bnf(sd, f"{p}.batchnorm_1", F.conv2d(_same(a, s), sd[f"{p}.conv_0.weight"], stride=s)))
            h = F.conv2d(o, sd[f"{p}.conv_1.weight"], padding=1) + skip
    h = F.silu(_bnf(sd, "batchnorm", h)).mean((2, 3))
    return F.linear(h, sd["logits.weight"], sd["logits.bias"])


def ref_preact(sd, x, final_bn, preact_shortcut):
    h = F.conv2d(x, sd["conv1.weight"], padding=1)
    for k in range(4):
        for i in range(2):
            p, s = f"layer{k + 1}.{i}", (1 if k == 0 else 2) if i == 0 else 1
            a = F.relu(_bnf(sd, f"{p}.bn1", h))
            w = sd.get(f"{p}.shortcut.0.weight")
            skip = h if w is None else F.conv2d(a if preact_shortcut else h, w, stride=s)
            o = F.relu(_bnf(sd, f"{p}.bn2", F.conv2d(a, sd[f"{p}.conv1.weight"], stride=s, padding=1)))
            h = F.conv2d(o, sd[f"{p}.conv2.weight"], padding=1) + skip
    if final_bn:
        h = F.relu(_bnf(sd, "bn", h))
    return F.linear(h.mean((2, 3)), sd["linear.weight"], sd["linear.bias"])


def ref_dm_preact(sd, x):
    h = F.conv2d(x, sd["conv_2d.weight"], padding=1)
    for k in range(4):
        for i in range(2):
            p, s = f"layer_{k}.{i}", (1 if k == 0 else 2) if i == 0 else 1
            a = F.silu(_bnf(sd, f"{p}.batchnorm_0", h))
            w = sd.get(f"{p}.shortcut.weight")
            skip = h if w is None else F.conv2d(_same(h, s), w, stride=s)
            o = F.silu(_bnf(sd, f"{p}.batchnorm_1", F.conv2d(_same(a, s), sd[f"{p}.conv_2d_1.weight"], stride=s)))
            h = F.conv2d(o, sd[f"{p}.conv_2d_2.weight"], padding=1) + skip
    h = F.silu(_bnf(sd, "batchnorm", h)).mean((2, 3))
    return F.linear(h, sd["logits.weight"], sd["logits.bias"])


def ref_resnet18(sd, x):
    h = F.relu(_bnf(sd, "bn1", F.conv2d(x, sd["conv1.weight"], padding=1)))
    for k in range(4):
        for i in range(2):
            p, s = f"layer{k + 1}.{i}", (1 if k == 0 else 2) if i == 0 else 1
            o = F.relu(_bnf(sd, f"{p}.bn1", F.conv2d(h, sd[f"{p}.conv1.weight"], stride=s, padding=1)))
            o = _bnf(sd, f"{p}.bn2", F.conv2d(o, sd[f"{p}.conv2.weight"], padding=1))
            w = sd.get(f"{p}.shortcut.0.weight")
            skip = h if w is None else _bnf(sd, f"{p}.shortcut.1", F.conv2d(h, w, stride=s))
            h = F.relu(o + skip)
    return F.linear(h.mean((2, 3)), sd["linear.weight"], sd["linear.bias"])


# ---- what each listed entry is, from RobustBench's tables (full size: keys on the meta device) -------
FULL = {
    ("cifar10", "Carmon2019Unlabeled"): trades_keys(28, 10, 10, sub_block1=True),
    ("cifar10", "Standard"): trades_keys(28, 10, 10),
    ("cifar10", "Zhang2020Attacks"): trades_keys(34, 10, 10, sub_block1=True),
    ("cifar10", "Chen2021LTD_WRN34_10"): trades_keys(34, 10, 10),
    ("cifar10", "Chen2021LTD_WRN34_20"): trades_keys(34, 20, 10),
    ("cifar10", "Rice2020Overfitting"): trades_keys(34, 20, 10),
    ("cifar10", "Jia2022LAS-AT_70_16"): trades_keys(70, 16, 10),
    ("cifar10", "Gowal2020Uncovering_70_16_extra"): dm_wrn_keys(70, 16, 10),
    ("cifar10", "Gowal2020Uncovering_28_10_extra"): dm_wrn_keys(28, 10, 10),
    ("cifar10", "Gowal2020Uncovering_34_20"): dm_wrn_keys(34, 20, 10),
    ("cifar10", "Rebuffi2021Fixing_70_16_cutmix_extra"): dm_wrn_keys(70, 16, 10),
    ("cifar10", "Rebuffi2021Fixing_106_16_cutmix_ddpm"): dm_wrn_keys(106, 16, 10),
    ("cifar10", "Rebuffi2021Fixing_R18_ddpm"): dm_preact_keys(10),
    ("cifar10", "Wong2020Fast"): preact_keys(10),
    ("cifar10", "Andriushchenko2020Understanding"): preact_keys(10),
    ("cifar10", "Sehwag2021Proxy_R18"): resnet18_keys(10),
    ("cifar10", "Madry2018Towards_WRN32_10"): trades_keys(32, 10, 10, extra=2),
    ("cifar100", "Gowal2020Uncovering"): dm_wrn_keys(70, 16, 100),
    ("cifar100", "Gowal2020Uncovering_extra"): dm_wrn_keys(70, 16, 100),
    ("cifar100", "Rebuffi2021Fixing_70_16_cutmix_ddpm"): dm_wrn_keys(70, 16, 100),
    ("cifar100", "Rebuffi2021Fixing_28_10_cutmix_ddpm"): dm_wrn_keys(28, 10, 100),
    ("cifar100", "Rebuffi2021Fixing_R18_ddpm"): dm_preact_keys(100),
    ("cifar100", "Rice2020Overfitting"): preact_keys(100, final_bn=True),
    ("cifar100", "Chen2021LTD_WRN34_10"): trades_keys(34, 10, 100, sub_block1=True),
    ("cifar100", "Cui2020Learnable_34_20_LBGAT6"): trades_keys(34, 20, 100, sub_block1=True),
    ("cifar100", "Addepalli2022Efficient_RN18"): resnet18_keys(100),
}
NORMS = {  # the mean/std each entry's network applies (None: it takes [0,1] input as is)
    ("cifar10", "Carmon2019Unlabeled"): None,
    ("cifar10", "Chen2021LTD_WRN34_20"): None,
    ("cifar10", "Rice2020Overfitting"): (C10_MEAN, C10_STD),
    ("cifar10", "Wong2020Fast"): (C10_MEAN, C10_STD),
    ("cifar10", "Gowal2020Uncovering_70_16_extra"): (C10_MEAN, C10_STD),
    ("cifar10", "Rebuffi2021Fixing_R18_ddpm"): (C10_MEAN, C10_STD),
    ("cifar10", "Sehwag2021Proxy_R18"): None,
    ("cifar10", "Hendrycks2019Using"): ([0.5] * 3, [0.5] * 3),
    ("cifar100", "Gowal2020Uncovering"): (C100_MEAN, C100_STD),
    ("cifar100", "Rice2020Overfitting"): (C100_RICE_MEAN, C100_RICE_STD),
    ("cifar100", "Chen2021LTD_WRN34_10"): None,
    ("cifar10", "Zhang2020Attacks"): None,
    ("cifar10", "Madry2018Towards_WRN32_10"): None,
    ("cifar10", "Gowal2020Uncovering_28_10_extra"): (C10_MEAN, C10_STD),
}


def _meta(shapes: dict) -> dict:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize("dataset,name", sorted(FULL))
def test_full_size_layout_matches_robustbench(dataset, name):
    """Every listed entry's darht model has exactly the checkpoint's keys and shapes (plus its own
    mean/std buffers), checked at full size on the meta device; `module.` and sub_block1 included."""
    entry = rb.lookup(name, dataset=dataset)
    state = {"module." + k: v for k, v in _meta(FULL[(dataset, name)]).items()}
    rb.check_keys(entry, rb.adapt_state(entry, state))
    with torch.device("meta"):
        model = rb.build(entry)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in ("mean", "std")}
    want = {k: tuple(s) for k, s in FULL[(dataset, name)].items() if not k.startswith("sub_block1.")}
    assert ours == want


@pytest.mark.parametrize("dataset,name", sorted(NORMS))
def test_normalization_is_the_entrys(dataset, name):
    entry = rb.lookup(name, dataset=dataset)
    want = NORMS[(dataset, name)]
    assert entry.num_classes == (10 if dataset == "cifar10" else 100)
    if want is None:
        assert entry.mean is None and entry.std is None and "mean" not in entry.model_kwargs()
    else:
        assert list(entry.mean) == want[0] and list(entry.std) == want[1]
    with torch.device("meta"):
        model = rb.build(entry)
    assert tuple(model.mean.shape) == (3, 1, 1) and tuple(model.std.shape) == (3, 1, 1)


def test_table_covers_the_zoo_and_builds_everything_on_meta():
    assert len(rb.names("cifar10")) >= 50 and len(rb.names("cifar100")) >= 25
    models = {e.model for t in rb.TABLE.values() for e in t.values()}
    assert models == {"wrn-28-10", "wrn-34-10", "wrn-34-20", "wrn-32-10", "wrn-70-16", "wrn-28-10-dm",
                      "preact-resnet18", "preact-resnet18-dm", "resnet18"}
    for t in rb.TABLE.values():
        for e in t.values():
            with torch.device("meta"):
                m = rb.build(e)
            assert m.spec["num_classes"] == e.num_classes and e.arch and e.source
    assert "Engstrom2019Robustness" not in rb.names()  # ResNet-50: not in the zoo


# ---- loading by name, reduced sizes ------------------------------------------------------------------
# (dataset, name, overrides of the table's model kwargs, expected keys, reference forward)
SMALL = [
    ("cifar10", "Carmon2019Unlabeled", {"depth": 10, "widen_factor": 1},
     trades_keys(10, 1, 10, sub_block1=True), lambda sd, x: ref_trades(sd, x, 1)),
    ("cifar10", "Zhang2020Attacks", {"depth": 16, "widen_factor": 1},
     trades_keys(16, 1, 10, sub_block1=True), lambda sd, x: ref_trades(sd, x, 2)),
    ("cifar10", "Chen2021LTD_WRN34_20", {"depth": 10, "widen_factor": 2},
     trades_keys(10, 2, 10), lambda sd, x: ref_trades(sd, x, 1)),
    ("cifar10", "Rice2020Overfitting", {"depth": 10, "widen_factor": 2},
     trades_keys(10, 2, 10), lambda sd, x: ref_trades(sd, x, 1)),
    ("cifar10", "Madry2018Towards_WRN32_10", {"depth": 14, "widen_factor": 1},
     trades_keys(14, 1, 10, extra=2), lambda sd, x: ref_trades(sd, x, 2)),
    ("cifar10", "Gowal2020Uncovering_70_16_extra", {"depth": 16, "widen_factor": 1},
     dm_wrn_keys(16, 1, 10), lambda sd, x: ref_dm_wrn(sd, x, 2)),
    ("cifar10", "Gowal2020Uncovering_28_10_extra", {"depth": 10, "widen_factor": 2},
     dm_wrn_keys(10, 2, 10), lambda sd, x: ref_dm_wrn(sd, x, 1)),
    ("cifar10", "Rebuffi2021Fixing_R18_ddpm", {"width": 8},
     dm_preact_keys(10, 8), ref_dm_preact),
    ("cifar10", "Wong2020Fast", {"width": 8},
     preact_keys(10, 8), lambda sd, x: ref_preact(sd, x, final_bn=False, preact_shortcut=False)),
    ("cifar10", "Sehwag2021Proxy_R18", {"width": 8}, resnet18_keys(10, 8), ref_resnet18),
    ("cifar100", "Gowal2020Uncovering", {"depth": 10, "widen_factor": 1},
     dm_wrn_keys(10, 1, 100), lambda sd, x: ref_dm_wrn(sd, x, 1)),
    ("cifar100", "Rice2020Overfitting", {"width": 8},
     preact_keys(100, 8, final_bn=True), lambda sd, x: ref_preact(sd, x, final_bn=True, preact_shortcut=True)),
    ("cifar100", "Chen2021LTD_WRN34_10", {"depth": 10, "widen_factor": 1},
     trades_keys(10, 1, 100, sub_block1=True), lambda sd, x: ref_trades(sd, x, 1)),
]
WRAPS = ["bare", "state_dict+module", "module", "state_dict"]


@pytest.fixture
def small(monkeypatch):
    """Shrink table entries (depth/width only: the layout, the normalization and the dropped
    groups stay the entry's) so their weights are cheap to build and load."""

    def shrink(dataset: str, name: str, overrides: dict) -> rb.Entry:
        entry = rb.TABLE[dataset][name]
        kw = {**dict(entry.kwargs), **overrides}
        small_entry = dataclasses.replace(entry, kwargs=tuple(kw.items()))
        monkeypatch.setitem(rb.TABLE[dataset], name, small_entry)
        return small_entry

    return shrink


def _save(state: dict, path, wrap: str) -> None:
    if "module" in wrap:
        state = {"module." + k: v for k, v in state.items()}
    if wrap.startswith("state_dict"):
        state = {"state_dict": state, "epoch": 99, "best_acc": 0.5}
    torch.save(state, path)


@pytest.mark.parametrize("i", range(len(SMALL)), ids=[f"{d}-{n}" for d, n, *_ in SMALL])
def test_load_by_name_matches_reference(i, small, tmp_path):
    dataset, name, overrides, shapes, ref = SMALL[i]
    small(dataset, name, overrides)
    sd = random_state(shapes, seed=i)
    path = tmp_path / f"{name}.pt"
    _save(sd, path, WRAPS[i % len(WRAPS)])
    k = 10 if dataset == "cifar10" else 100
    teacher = load_teacher(f"{name}={path}", num_classes=k, in_chans=3, img_size=32)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(i))
    out = teacher(x)
    assert out.shape == (2, k)
    want = NORMS[(dataset, name)] or ([0.0] * 3, [1.0] * 3)  # RobustBench's numbers, not the table's
    mean, std = torch.tensor(want[0]).view(1, 3, 1, 1), torch.tensor(want[1]).view(1, 3, 1, 1)
    assert torch.equal(teacher.model.mean, mean[0]) and torch.equal(teacher.model.std, std[0])
    with torch.no_grad():
        expected = ref(sd, (x - mean) / std)
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4), (out - expected).abs().max()
    assert teacher.model.source["robustbench"] == name and not teacher.training


def test_andriushchenko_weights_under_last(small, tmp_path):
    small("cifar10", "Andriushchenko2020Understanding", {"width": 4})
    sd = random_state(preact_keys(10, 4), seed=3)
    torch.save({"last": {"module." + k: v for k, v in sd.items()}, "best": {}}, tmp_path / "a.pt")
    t = load_teacher(f"Andriushchenko2020Understanding={tmp_path / 'a.pt'}", num_classes=10, in_chans=3, img_size=32)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(t(x), ref_preact(sd, x, final_bn=False, preact_shortcut=False), atol=1e-4)


def test_mu_sigma_in_checkpoint_checked_and_dropped(small, tmp_path):
    small("cifar10", "Wong2020Fast", {"width": 4})
    sd = random_state(preact_keys(10, 4), seed=5)
    good = {**sd, "mu": torch.tensor(C10_MEAN).view(1, 3, 1, 1), "sigma": torch.tensor(C10_STD).view(1, 3, 1, 1)}
    torch.save(good, tmp_path / "good.pt")
    load_teacher(f"Wong2020Fast={tmp_path / 'good.pt'}", num_classes=10, in_chans=3, img_size=32)
    bad = {**good, "mu": torch.full((1, 3, 1, 1), 0.5)}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(DarhtError, match="normalization") as e:
        load_teacher(f"Wong2020Fast={tmp_path / 'bad.pt'}", num_classes=10, in_chans=3, img_size=32)
    assert "\n" not in str(e.value)


# ---- configs ----------------------------------------------------------------------------------------
def test_yaml_mapping_form_and_mtard_roles(small, tmp_path):
    small("cifar10", "Sehwag2021Proxy_R18", {"width": 4})
    sd = random_state(resnet18_keys(10, 4))
    ckpt = tmp_path / "r18.pt"
    _save(sd, ckpt, "state_dict+module")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"method: rslad\nteachers:\n  - robustbench: Sehwag2021Proxy_R18\n    path: {ckpt}\n")
    cfg = make_config(load_yaml(cfg_file))
    check_run(cfg)
    specs = teacher_specs(METHODS.get(cfg.method), cfg.teachers)
    assert specs == [f"Sehwag2021Proxy_R18={ckpt}"]
    t = load_teacher(specs[0], num_classes=10, in_chans=3, img_size=32)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(t(x), ref_resnet18(sd, x), atol=1e-4)
    # one mapping alone is one teacher, not roles
    cfg = make_config({"method": "rslad", "teachers": {"robustbench": "Sehwag2021Proxy_R18", "path": str(ckpt)}})
    assert teacher_specs(METHODS.get("rslad"), cfg.teachers) == [f"Sehwag2021Proxy_R18={ckpt}"]
    # MTARD's role mapping, with a RobustBench mapping in one role and a spec string in the other
    raw = {"method": "mtard", "teachers": {"adversarial": {"robustbench": "Sehwag2021Proxy_R18", "path": str(ckpt)},
                                           "natural": "small-cnn"}}
    cfg = make_config(raw)
    check_run(cfg)
    assert teacher_specs(METHODS.get("mtard"), cfg.teachers) == [f"Sehwag2021Proxy_R18={ckpt}", "small-cnn"]


@pytest.mark.parametrize("teachers,match", [
    ([{"robustbench": "Chen2021LTD_WRN34_2", "path": "x.pt"}], "did you mean Chen2021LTD_WRN34_20"),
    ([{"robustbench": "Chen2021LTD_WRN34_20"}], r"teachers\[0\].path must be the file"),
    ([{"robustbench": "Chen2021LTD_WRN34_20", "path": "x.pt", "url": "y"}], "unknown key 'url'"),
    ([{"path": "x.pt"}], r"teachers\[0\].robustbench must be"),
    ({"adversarial": {"robustbench": "Nope", "path": "x"}, "natural": "small-cnn"}, "unknown RobustBench model"),
    ({"a": [1]}, "teachers.a must be a string or a mapping"),
    (["Chen2021LTD_WRN34_2=x.pt"], r"teachers\[0\]: 'Chen2021LTD_WRN34_2' is neither .*did you mean Chen2021LTD_WRN34_20"),
])
def test_config_errors_are_one_line(teachers, match):
    method = "mtard" if isinstance(teachers, dict) and "natural" in teachers else "rslad"
    with pytest.raises(DarhtError, match=match) as e:
        check_run(make_config({"method": method, "teachers": teachers}))
    assert "\n" not in str(e.value)


# ---- user mistakes at load time: one line each -------------------------------------------------------
def test_load_errors_are_one_line(small, tmp_path):
    small("cifar10", "Sehwag2021Proxy_R18", {"width": 4})
    good = tmp_path / "r18.pt"
    torch.save(random_state(resnet18_keys(10, 4)), good)
    wrong = tmp_path / "wrong.pt"
    torch.save(random_state(preact_keys(10, 4)), wrong)
    cases = [
        (f"Chen2021LTD_WRN34_2={good}", 10, 3, "did you mean Chen2021LTD_WRN34_20"),
        (f"Gowal2020Uncovering={good}", 10, 3, "cifar100 .100 classes. model, but the data set has 10"),
        (f"Sehwag2021Proxy_R18={good}", 100, 3, "cifar10 .10 classes. model, but the data set has 100"),
        (f"Sehwag2021Proxy_R18={good}", 200, 3, "the data set has 200 classes"),
        (f"Sehwag2021Proxy_R18={good}", 10, 1, "3-channel"),
        (f"Sehwag2021Proxy_R18={tmp_path / 'missing.pt'}", 10, 3, "no such file .*fetch-teacher"),
        (f"Sehwag2021Proxy_R18={wrong}", 10, 3, "does not fit RobustBench 'Sehwag2021Proxy_R18'.*missing keys"),
        ("Sehwag2021Proxy_R18", 10, 3, "needs its weights: give Sehwag2021Proxy_R18=PATH"),
        (f"wrn-34-1={good}", 10, 3, "did you mean wrn-34-10"),
    ]
    for spec, k, c, match in cases:
        with pytest.raises(DarhtError, match=match) as e:
            load_teacher(spec, num_classes=k, in_chans=c, img_size=32)
        assert "\n" not in str(e.value), spec


def test_name_in_both_tables_picks_by_classes():
    assert rb.lookup("Rice2020Overfitting", num_classes=10).model == "wrn-34-20"
    assert rb.lookup("Rice2020Overfitting", num_classes=100).model == "preact-resnet18"
    with pytest.raises(DarhtError, match="cifar10 and cifar100; say which"):
        rb.lookup("Rice2020Overfitting")


# ---- darht data fetch-teacher ------------------------------------------------------------------------
def test_fetch_teacher_from_file_url(small, tmp_path, capsys):
    small("cifar10", "Sehwag2021Proxy_R18", {"width": 4})
    src = tmp_path / "src" / "weights.pt"
    src.parent.mkdir()
    _save(random_state(resnet18_keys(10, 4)), src, "state_dict+module")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "teachers" / "r18.pt"
    argv = ["data", "fetch-teacher", "Sehwag2021Proxy_R18", "--url", src.as_uri(), "--out", str(out)]
    assert main(argv + ["--sha256", "0" * 64]) == 2 and not out.exists()
    assert "sha256 mismatch" in capsys.readouterr().err
    assert main(argv + ["--sha256", digest]) == 0 and out.is_file()
    assert f"--teacher Sehwag2021Proxy_R18={out}" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["r18.pt"]  # no temporary file left
    load_teacher(f"Sehwag2021Proxy_R18={out}", num_classes=10, in_chans=3, img_size=32)
    # a file of another layout is refused and not installed
    other = tmp_path / "src" / "other.pt"
    torch.save(random_state(preact_keys(10, 4)), other)
    out2 = tmp_path / "teachers" / "bad.pt"
    assert main(["data", "fetch-teacher", "Sehwag2021Proxy_R18", "--url", other.as_uri(), "--out", str(out2)]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("darht: error:")]
    assert len(errors) == 1 and "does not fit" in errors[0] and not out2.exists()
    assert main(["data", "fetch-teacher", "Sehwag2021Proxy_R1", "--url", other.as_uri()]) == 2
    assert "did you mean Sehwag2021Proxy_R18" in capsys.readouterr().err
