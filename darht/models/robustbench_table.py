"""The RobustBench table: CIFAR-10 / CIFAR-100 Linf names -> darht model, key layout and
normalization (`Entry`), read from RobustBench's model zoo (the sources are listed in
darht.models.robustbench, which looks names up and loads checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


DATASETS = {"cifar10": 10, "cifar100": 100}
RB = "RobustBench robustbench/model_zoo/{}.py"

# mean/std as RobustBench writes them (per name; they differ in the last digits)
C10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))   # dm_wide_resnet.CIFAR10_MEAN/STD, Wong, Rice
C100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))  # dm_wide_resnet.CIFAR100_MEAN/STD
C100_RICE = ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
             (0.2673342858792401, 0.2564384629170883, 0.27615047132568404))  # cifar100 Rice/Wu nets
C100_CHEN = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))  # cifar100 Chen2020EfficientNet
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # Hendrycks2019Using: x -> 2x - 1


@dataclass(frozen=True)
class Entry:
    """One named checkpoint: the darht model (`model` + `kwargs`) whose state dict keys are the
    checkpoint's (after `drop` prefixes are removed), and the normalization applied inside."""

    name: str
    dataset: str
    model: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    drop: tuple[str, ...] = ()      # key prefixes present in the checkpoint but unused (sub_block1.)
    arch: str = ""                  # in words, e.g. "WRN-34-20 (TRADES layout, ReLU)"
    source: str = ""
    nested: tuple[str, ...] = field(default=())  # checkpoint keys to descend into first ('last')

    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset]

    def model_kwargs(self) -> dict[str, Any]:
        kw = dict(self.kwargs)
        if self.mean is not None:
            kw.update(mean=list(self.mean), std=list(self.std))
        return kw


# ---- the architectures, by layout -------------------------------------------------------------------
def _trades(depth: int, widen: int, sub_block1: bool = False) -> dict:
    """RobustBench's WideResNet (TRADES layout, ReLU): conv1, block{1,2,3}.layer.i.*, bn1, fc."""
    named = {(28, 10): "wrn-28-10", (34, 10): "wrn-34-10", (34, 20): "wrn-34-20"}
    model = named.get((depth, widen), "wrn-34-10")
    kw = () if (depth, widen) in named else (("depth", depth), ("widen_factor", widen))
    layout = "TRADES layout, ReLU" + (", unused sub_block1 dropped" if sub_block1 else "")
    return {"model": model, "kwargs": kw, "drop": ("sub_block1.",) if sub_block1 else (),
            "arch": f"WRN-{depth}-{widen} ({layout})"}


def _dm(depth: int, widen: int, silu: bool = False) -> dict:
    """RobustBench's DMWideResNet (DeepMind layout, Swish = SiLU): init_conv, layer.g.block.i.*,
    batchnorm, logits; mean/std not in the checkpoint."""
    named = {(70, 16): "wrn-70-16", (28, 10): "wrn-28-10-dm"}
    model = named.get((depth, widen), "wrn-70-16")
    kw = () if (depth, widen) in named else (("depth", depth), ("widen_factor", widen))
    act = "nn.SiLU" if silu else "Swish"
    return {"model": model, "kwargs": kw, "arch": f"WRN-{depth}-{widen} (DeepMind layout, {act})"}


def _dm_preact() -> dict:
    return {"model": "preact-resnet18-dm", "arch": "PreAct-ResNet-18 (DeepMind layout, Swish)"}


def _rb_preact() -> dict:
    """RobustBench's PreActResNet(PreActBlock, [2,2,2,2]): no final BN, raw-input shortcut."""
    return {"model": "preact-resnet18", "kwargs": (("final_bn", False), ("preact_shortcut", False)),
            "arch": "PreAct-ResNet-18 (RobustBench PreActBlock: raw-input shortcut, no final BN)"}


def _preact_bn() -> dict:
    """PreActResNet with bn_before_fc=True and the shortcut on relu(bn1(x)) (out_shortcut=True or
    PreActBlockV2): darht's preact-resnet18 as it is."""
    return {"model": "preact-resnet18", "arch": "PreAct-ResNet-18 (pre-activation shortcut, final BN)"}


def _r18() -> dict:
    return {"model": "resnet18", "arch": "ResNet-18 (conv1, bn1, layerK, linear)"}


def _entry(dataset: str, name: str, arch: dict, norm: tuple | None = None, **extra: Any) -> Entry:
    mean, std = norm if norm is not None else (None, None)
    return Entry(name=name, dataset=dataset, mean=mean, std=std, source=RB.format(dataset), **arch, **extra)


def _table() -> dict[str, dict[str, Entry]]:
    c10 = [
        ("Andriushchenko2020Understanding", _rb_preact(), None, {"nested": ("last",)}),
        ("Carmon2019Unlabeled", _trades(28, 10, True), None),
        ("Sehwag2020Hydra", _trades(28, 10, True), None),
        ("Wang2020Improving", _trades(28, 10, True), None),
        ("Hendrycks2019Using", _trades(28, 10), HALF),
        ("Rice2020Overfitting", _trades(34, 20), C10),
        ("Zhang2019Theoretically", _trades(34, 10, True), None),
        ("Huang2020Self", _trades(34, 10, True), None),
        ("Wong2020Fast", _rb_preact(), C10),
        ("Zhang2019You", _trades(34, 10, True), None),
        ("Zhang2020Attacks", _trades(34, 10, True), None),
        ("Wu2020Adversarial_extra", _trades(28, 10, True), None),
        ("Wu2020Adversarial", _trades(34, 10), None),
        ("Gowal2020Uncovering_70_16", _dm(70, 16), C10),
        ("Gowal2020Uncovering_70_16_extra", _dm(70, 16), C10),
        ("Gowal2020Uncovering_34_20", _dm(34, 20), C10),
        ("Gowal2020Uncovering_28_10_extra", _dm(28, 10), C10),
        ("Sehwag2021Proxy", _trades(34, 10), None),
        ("Sehwag2021Proxy_R18", _r18(), None),
        ("Sitawarin2020Improving", _trades(34, 10, True), None),
        ("Chen2020Efficient", _trades(34, 10, True), C10),
        ("Cui2020Learnable_34_20", _trades(34, 20, True), None),
        ("Cui2020Learnable_34_10", _trades(34, 10, True), None),
        ("Zhang2020Geometry", _trades(28, 10, True), None),
        ("Rebuffi2021Fixing_28_10_cutmix_ddpm", _dm(28, 10), C10),
        ("Rebuffi2021Fixing_106_16_cutmix_ddpm", _dm(106, 16), C10),
        ("Rebuffi2021Fixing_70_16_cutmix_ddpm", _dm(70, 16), C10),
        ("Rebuffi2021Fixing_70_16_cutmix_extra", _dm(70, 16), C10),
        ("Sridhar2021Robust", _trades(28, 10, True), None),
        ("Sridhar2021Robust_34_15", _trades(34, 15, True), None),
        ("Rebuffi2021Fixing_R18_ddpm", _dm_preact(), C10),
        ("Rade2021Helper_R18_extra", _dm_preact(), C10),
        ("Rade2021Helper_R18_ddpm", _dm_preact(), C10),
        ("Rade2021Helper_extra", _dm(34, 10), C10),
        ("Rade2021Helper_ddpm", _dm(28, 10), C10),
        ("Addepalli2021Towards_RN18", _r18(), None),
        ("Addepalli2021Towards_WRN34", _trades(34, 10, True), None),
        ("Gowal2021Improving_70_16_ddpm_100m", _dm(70, 16), C10),
        ("Gowal2021Improving_28_10_ddpm_100m", _dm(28, 10), C10),
        ("Gowal2021Improving_R18_ddpm_100m", _dm_preact(), C10),
        ("Chen2021LTD_WRN34_10", _trades(34, 10), None),
        ("Chen2021LTD_WRN34_20", _trades(34, 20), None),
        ("Standard", _trades(28, 10), None),
        ("Jia2022LAS-AT_34_10", _trades(34, 10), None),
        ("Jia2022LAS-AT_70_16", _trades(70, 16), None),
        ("Pang2022Robustness_WRN28_10", _dm(28, 10), C10),
        ("Pang2022Robustness_WRN70_16", _dm(70, 16), C10),
        ("Addepalli2022Efficient_RN18", _r18(), None),
        ("Addepalli2022Efficient_WRN_34_10", _trades(34, 10), None),
        ("Wang2023Better_WRN-28-10", _dm(28, 10, silu=True), C10),
        ("Wang2023Better_WRN-70-16", _dm(70, 16, silu=True), C10),
        ("Xu2023Exploring_WRN-28-10", _dm(28, 10, silu=True), C10),
        ("Cui2023Decoupled_WRN-28-10", _dm(28, 10, silu=True), C10),
        ("Cui2023Decoupled_WRN-34-10", _trades(34, 10), None),
        ("Chen2024Data_WRN_34_10", _trades(34, 10), None),
        ("Chen2024Data_WRN_34_20", _trades(34, 20), None),
    ]
    c100 = [
        ("Gowal2020Uncovering", _dm(70, 16), C100),
        ("Gowal2020Uncovering_extra", _dm(70, 16), C100),
        ("Cui2020Learnable_34_20_LBGAT6", _trades(34, 20, True), None),
        ("Cui2020Learnable_34_10_LBGAT0", _trades(34, 10, True), None),
        ("Cui2020Learnable_34_10_LBGAT6", _trades(34, 10, True), None),
        ("Chen2020Efficient", _trades(34, 10, True), C100_CHEN),
        ("Wu2020Adversarial", _trades(34, 10), C100_RICE),
        ("Sehwag2021Proxy", _trades(34, 10), None),
        ("Sitawarin2020Improving", _trades(34, 10, True), None),
        ("Hendrycks2019Using", _trades(28, 10), HALF),
        ("Rice2020Overfitting", _preact_bn(), C100_RICE),
        ("Rebuffi2021Fixing_70_16_cutmix_ddpm", _dm(70, 16), C100),
        ("Rebuffi2021Fixing_28_10_cutmix_ddpm", _dm(28, 10), C100),
        ("Rebuffi2021Fixing_R18_ddpm", _dm_preact(), C100),
        ("Rade2021Helper_R18_ddpm", _dm_preact(), C100),
        ("Addepalli2021Towards_PARN18", _preact_bn(), None),
        ("Addepalli2021Towards_WRN34", _trades(34, 10, True), None),
        ("Chen2021LTD_WRN34_10", _trades(34, 10, True), None),
        ("Pang2022Robustness_WRN28_10", _dm(28, 10), C100),
        ("Pang2022Robustness_WRN70_16", _dm(70, 16), C100),
        ("Jia2022LAS-AT_34_10", _trades(34, 10, True), None),
        ("Jia2022LAS-AT_34_20", _trades(34, 20), None),
        ("Addepalli2022Efficient_RN18", _r18(), None),
        ("Addepalli2022Efficient_WRN_34_10", _trades(34, 10), None),
        ("Cui2020Learnable_34_10_LBGAT9_eps_8_255", _trades(34, 10), None),
        ("Wang2023Better_WRN-28-10", _dm(28, 10, silu=True), C100),
        ("Wang2023Better_WRN-70-16", _dm(70, 16, silu=True), C100),
        ("Cui2023Decoupled_WRN-28-10", _dm(28, 10, silu=True), C100),
        ("Cui2023Decoupled_WRN-34-10", _trades(34, 10), None),
        ("Cui2023Decoupled_WRN-34-10_autoaug", _trades(34, 10), None),
        ("Chen2024Data_WRN_34_10", _trades(34, 10), None),
    ]
    table: dict[str, dict[str, Entry]] = {"cifar10": {}, "cifar100": {}}
    for ds, rows in (("cifar10", c10), ("cifar100", c100)):
        for name, arch, norm, *extra in rows:
            table[ds][name] = _entry(ds, name, arch, norm, **(extra[0] if extra else {}))
    fat = "zjfheart/Friendly-Adversarial-Training models/wrn_madry.py (not in RobustBench)"
    wrn32 = {"model": "wrn-32-10", "arch": "WRN-32-10 (FAT's Wide_ResNet_Madry: TRADES keys, 5 blocks per group)"}
    for name in EXTRA:
        table["cifar10"][name] = Entry(name=name, dataset="cifar10", source=fat, **wrn32)
    return table


# Madry-style PGD-AT and FAT on WRN-32-10 (the paper's Table 5 rows); weights come from the user
EXTRA = ("Madry2018Towards_WRN32_10", "Zhang2020Attacks_WRN32_10")
TABLE: dict[str, dict[str, Entry]] = _table()
