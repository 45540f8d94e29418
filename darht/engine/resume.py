"""`--resume` means resume: the differences between a checkpoint's config and the current one.

A resumed run with a changed hyperparameter would train with the old value while config.yaml
records the new one; the trainer refuses instead and lists every differing key.
"""

from __future__ import annotations

import json
from typing import Any

from darht.config import TrainConfig, to_dict
from darht.errors import DarhtError
from darht.methods.base import teacher_specs
from darht.registry import METHODS

# Keys that cannot change what is computed: they may differ between a run and its --resume.
# data.stream: a streamed run reads bit-identical batches (darht.data.cache).
RESUME_SILENT_KEYS = frozenset({"progress", "device", "workers", "out", "data.stream"})


def config_differences(old: dict, new: dict) -> list[str]:
    """'key old -> new' for every dotted key whose value differs (apart from RESUME_SILENT_KEYS),
    in the config's order; a key missing on one side shows as (unset), except a key the
    checkpoint predates that is still at its default."""
    a, b = _flatten(_teachers_as_list(old)), _flatten(_teachers_as_list(new))
    defaults = _flatten(to_dict(TrainConfig()))
    keys = list(b) + [k for k in a if k not in b]
    out = []
    for k in keys:
        if k in RESUME_SILENT_KEYS:
            continue
        va, vb = a.get(k, _UNSET), b.get(k, _UNSET)
        if va is _UNSET and k in defaults and _same(defaults[k], vb):
            continue  # a field added since the checkpoint was written, left at its default
        if not _same(va, vb):
            out.append(f"{k} {_show(va)} -> {_show(vb)}")
    return out


_UNSET = object()


def _teachers_as_list(cfg: dict) -> dict:
    """`teachers` as the list the method takes (roles in role order), so that the same teachers
    given as a mapping or as a list compare equal; a checkpoint written before teacher roles kept
    MTARD's natural teacher in `teacher_natural`, which is its second teacher."""
    cfg = dict(cfg)
    teachers = cfg.get("teachers")
    natural = cfg.pop("teacher_natural", None)
    if natural:
        teachers = list(teachers or []) + [natural]
    if isinstance(teachers, dict):
        try:
            teachers = teacher_specs(METHODS.get(cfg.get("method")), teachers)
        except DarhtError:
            pass  # not this method's roles: compared as given, and so reported as a difference
    cfg["teachers"] = teachers
    return cfg


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = _plain(v)
    return out


def _plain(v: Any) -> Any:
    """Tuples and lists alike (a checkpoint stores lists)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _same(a: Any, b: Any) -> bool:
    if a is _UNSET or b is _UNSET:
        return a is b
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _show(v: Any) -> str:
    if v is _UNSET:
        return "(unset)"
    if isinstance(v, str) and v and v.isprintable() and v.strip() == v:
        return v
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)
