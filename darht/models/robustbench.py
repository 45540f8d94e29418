"""RobustBench CIFAR-10 / CIFAR-100 Linf models by name: architecture, key layout, normalization.

`lookup("Chen2021LTD_WRN34_20", num_classes=10)` gives the table's `Entry`; `load(name, path,
num_classes=...)` builds the darht model for it, with the entry's mean/std inside (the model takes
[0, 1] input), and loads a checkpoint as RobustBench stores it (a bare state dict or one under
'state_dict', `module.` / `model.` prefixes) strictly. Nothing is downloaded here: the weights are
a local file (`darht data fetch-teacher NAME --url URL` fetches one on request).

Facts, not code, from RobustBench (github.com/RobustBench/robustbench, snapshot 78fcc9e of
2025-03-31): robustbench/model_zoo/cifar10.py and cifar100.py (the `linf` tables: which network,
depth, width, activation, `sub_block1`, mean/std per name), architectures/wide_resnet.py (TRADES
layout), architectures/dm_wide_resnet.py (DeepMind WRN and PreAct-ResNet: Swish, mean/std buffers
registered non-persistent, so absent from the checkpoints; 'SAME' padding), architectures/resnet.py
(ResNet-18; PreActResNet whose projection shortcut takes the raw input unless `out_shortcut`, and
whose final BN exists only with `bn_before_fc`), and utils.py (`load_model`: 'state_dict' unwrapped,
'module.' and 'model.' prefixes removed; `mu`/`sigma` missing from the Rice2020Overfitting,
Wong2020Fast and Chen2020Efficient checkpoints; Andriushchenko2020Understanding's weights under
'last'). `sub_block1=True` networks carry an unused `sub_block1.*` group in the checkpoint (loaded
strictly there, never called in forward); darht drops it.

Left out: networks the zoo does not have (Engstrom2019Robustness's ResNet-50, ResNeXt, ResNeSt,
XCiT, composite/ensemble models, PSSiLU/RobustWRN variants, Ding2020MMA's per-image normalization).
Two entries are not RobustBench's (`EXTRA`): the WRN-32-10 of Madry-style and FAT training as
FAT's code builds it (zjfheart/Friendly-Adversarial-Training models/wrn_madry.py, inputs in [0,1]
without normalization, checkpoints {'state_dict': DataParallel keys}), the "WRN-32" of the paper's
Table 5.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darht.errors import DarhtError
from darht.models.io import _few, _torch_load, read_state_dict, resolve_checkpoint
from darht.models.robustbench_table import DATASETS, EXTRA, TABLE, Entry  # noqa: F401 (the table: its own file)
from darht.models.zoo import create_model


# ---- lookup ------------------------------------------------------------------------------------------
def names(dataset: str | None = None) -> list[str]:
    """Known names (of one data set, or all), sorted."""
    sets = [TABLE[dataset]] if dataset else TABLE.values()
    return sorted({n for t in sets for n in t})


def is_known(name: str) -> bool:
    return any(name in t for t in TABLE.values())


def close_matches(name: str, candidates: list[str] | None = None, n: int = 5) -> list[str]:
    pool = candidates if candidates is not None else names()
    lower = {c.lower(): c for c in pool}
    hits = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)]
    # a name's prefix (Gowal2020Uncovering -> its _70_16... variants) also counts
    hits += [c for c in pool if c.lower().startswith(name.lower()) and c not in hits]
    return hits[:n]


def lookup(name: str, num_classes: int | None = None, dataset: str | None = None) -> Entry:
    """The entry for `name` on `dataset` (or the data set with `num_classes` classes);
    DarhtError naming close matches, or saying which data set the name belongs to."""
    if dataset is not None and dataset not in TABLE:
        raise DarhtError(f"RobustBench data set must be one of {', '.join(TABLE)}, got '{dataset}'")
    found = {ds: t[name] for ds, t in TABLE.items() if name in t}
    if not found:
        near = close_matches(name)
        hint = f"; did you mean {', '.join(near)}?" if near else " (see darht.models.robustbench.names())"
        raise DarhtError(f"unknown RobustBench model '{name}' (CIFAR-10/100 Linf entries darht can build){hint}")
    if dataset is None and num_classes is not None:
        dataset = next((ds for ds, k in DATASETS.items() if k == num_classes), None)
        if dataset is None:
            have = ", ".join(f"{ds} ({DATASETS[ds]} classes)" for ds in found)
            raise DarhtError(f"RobustBench model '{name}' exists for {have}, but the data set has "
                             f"{num_classes} classes")
    if dataset is None:
        if len(found) > 1:
            raise DarhtError(f"RobustBench model '{name}' exists for {' and '.join(found)}; say which data set")
        dataset = next(iter(found))
    if dataset not in found:
        have = " and ".join(f"{ds} ({DATASETS[ds]} classes)" for ds in found)
        raise DarhtError(f"RobustBench model '{name}' is a {have} model, but the data set has "
                         f"{DATASETS[dataset]} classes")
    return found[dataset]


# ---- building and loading ----------------------------------------------------------------------------
def build(entry: Entry, *, img_size: int = 32, **overrides: Any) -> nn.Module:
    """The entry's darht model with random weights (its mean/std inside; 3-channel input).
    `overrides` replace model kwargs (tests build reduced widths this way)."""
    model = create_model(entry.model, entry.num_classes, in_chans=3, img_size=img_size,
                         **{**entry.model_kwargs(), **overrides})
    model.source = {"robustbench": entry.name, "dataset": entry.dataset}
    return model


def _unwrap(obj: Any, entry: Entry) -> Any:
    for key in entry.nested:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    return obj


def adapt_state(entry: Entry, state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """RobustBench's checkpoint keys -> the darht model's: wrapper prefixes ('module.', 'model.')
    removed, unused groups (`sub_block1.`) dropped, and normalization buffers (`mu`/`sigma`, or
    `mean`/`std`) checked against the table's and dropped (the model has the table's)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        while k.startswith(("module.", "model.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    for m_key, s_key in (("mu", "sigma"), ("mean", "std")):
        if m_key in out or s_key in out:
            m, s = out.pop(m_key, None), out.pop(s_key, None)
            want_m, want_s = entry.mean or (0.0,) * 3, entry.std or (1.0,) * 3
            for got, want, what in ((m, want_m, m_key), (s, want_s, s_key)):
                if got is not None and (got.numel() != len(want) or not torch.allclose(
                        got.detach().float().flatten().cpu(), torch.tensor(want), atol=1e-4)):
                    raise DarhtError(f"{where}: its '{what}' {got.flatten().tolist()} is not the normalization "
                                     f"of RobustBench '{entry.name}' ({list(want)}); wrong model name?")
    return {k: v for k, v in out.items() if not k.startswith(entry.drop)} if entry.drop else out


def read_checkpoint(entry: Entry, path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, in the darht model's key layout (see `adapt_state`)."""
    file = resolve_checkpoint(path)
    if entry.nested and file.suffix != ".safetensors":
        obj = _unwrap(_torch_load(file, "cpu"), entry)
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)} \
            if isinstance(obj, Mapping) else {}
        if not state:
            raise DarhtError(f"{file} holds no tensors")
    else:
        state, _ = read_state_dict(file)
    return adapt_state(entry, state, str(file))


def check_keys(entry: Entry, state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> None:
    """DarhtError unless `state` (already adapted) fits the entry's model; built on the meta device
    (no memory, no init), so a 267M-parameter network is checked in a moment."""
    with torch.device("meta"):
        model = build(entry)
    _check(model, state, where)


def _check(model: nn.Module, state: Mapping, where: str) -> None:
    """Exactly the model's keys and shapes, but for BN counters and the input mean/std (those
    are the table's: RobustBench's DeepMind networks never store them)."""
    expected = model.state_dict()

    def tolerated(k: str) -> bool:
        return k.split(".")[-1] == "num_batches_tracked" or k in ("mean", "std")

    missing = [k for k in expected if k not in state and not tolerated(k)]
    unexpected = [k for k in state if k not in expected]
    bad = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        parts = [f"missing keys: {_few(missing)}"] if missing else []
        parts += [f"unexpected keys: {_few(unexpected)}"] if unexpected else []
        parts += ["shape mismatch: " + _few([f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                                             for k in bad], 3)] if bad else []
        src = getattr(model, "source", {}) or {}
        raise DarhtError(f"{where} does not fit RobustBench '{src.get('robustbench')}' "
                         f"({model.spec['name']}): " + "; ".join(parts))


def load(name: str, path: str | Path, *, num_classes: int | None = None, dataset: str | None = None,
         img_size: int = 32, map_location: Any = "cpu") -> nn.Module:
    """The RobustBench model `name` with the weights in `path` (eval mode, [0, 1] input, the entry's
    normalization inside); every mismatch is a one-line DarhtError."""
    entry = lookup(name, num_classes=num_classes, dataset=dataset)
    if not Path(path).exists():
        raise DarhtError(f"no such file '{path}' (weights of RobustBench '{name}'; fetch them with "
                         f"`darht data fetch-teacher {name} --url URL`)")
    state = read_checkpoint(entry, path)
    model = build(entry, img_size=img_size)
    _check(model, state, str(path))
    model.load_state_dict(state, strict=False)  # strict in effect: _check allowed only mean/std (the table's)
    model.source = {"robustbench": entry.name, "dataset": entry.dataset, "path": str(path)}
    return model.to(map_location).eval()


def describe() -> list[str]:
    """One line per entry: 'dataset name: architecture, normalization' (for docs and `--help`)."""
    lines = []
    for ds, t in TABLE.items():
        for n, e in t.items():
            norm = f"mean {list(e.mean)} std {list(e.std)}" if e.mean else "no normalization"
            lines.append(f"{ds} {n}: {e.arch} -> {e.model}{' ' + str(dict(e.kwargs)) if e.kwargs else ''}, {norm}")
    return lines
