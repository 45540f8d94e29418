"""Evaluation records as `darht compare` reads them: reading (one line naming the file for any
problem), checking that two records were evaluated under the same protocol, and aligning their
per-example results by example index. The statistics are in darht.evaluation.stats.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from darht.errors import DarhtError
from darht.utils import read_json

WORST = "worst"
NEED_TWO = "compare needs at least two methods (records or NAME=PATH groups)"
NO_EXAMPLES = "has no per-example results; re-run darht evaluate"

# relative / absolute tolerance when comparing recorded floats (eps, attack step sizes, ...)
_REL_TOL, _ABS_TOL = 1e-9, 1e-12
_MISSING = object()


# ------------------------------------------------------------------------------ reading records
def _json_kind(value: Any) -> str:
    """How JSON calls the type of a parsed value (for error messages)."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def read_record(path: str | Path) -> dict:
    """Read an evaluation record written by `darht evaluate --out`; any problem is one DarhtError line."""
    p = Path(path)
    rec = read_json(p, "evaluation record")
    if not isinstance(rec, dict):
        raise DarhtError(f"{p}: holds {_json_kind(rec)}, not an evaluation record (a JSON object)")
    kind = rec.get("kind", "evaluation")
    if kind != "evaluation":
        raise DarhtError(f"{p}: is a '{kind}' record, not an evaluation record")
    missing = [k for k in ("trials", "summary") if k not in rec]
    if missing:
        raise DarhtError(f"{p}: not a darht evaluation record (no {' or '.join(repr(k) for k in missing)})")
    if not isinstance(rec["trials"], list) or not isinstance(rec["summary"], dict):
        raise DarhtError(f"{p}: not a darht evaluation record ('trials' must be a list, 'summary' an object)")
    return rec


def attacks_of(record: dict) -> list[str]:
    """Attack names a record has results for, in its order (summary, then per-example results)."""
    names = list(record.get("summary", {}).get("w_robust", {}))
    ex = record.get("examples")
    if isinstance(ex, dict) and isinstance(ex.get("robust"), dict):
        names += [k for k in ex["robust"] if k not in names]
    return names


def common_attacks(records: list[dict]) -> list[str]:
    """Attacks every record has, in the first record's order, with "worst" (when all have it) last."""
    have = [set(attacks_of(r)) for r in records]
    names = [k for k in attacks_of(records[0]) if all(k in s for s in have)]
    # "worst" is the headline number; keep it, and last, so tables end with it
    if WORST in names:
        names = [k for k in names if k != WORST] + [WORST]
    return names


def w_robust_per_trial(record: dict, attack: str, name: str = "record") -> list[float]:
    """The W-Robust of each trial of `record` under `attack`."""
    try:
        return [float(t["w_robust"][attack]) for t in record["trials"]]
    except (KeyError, TypeError):
        raise DarhtError(f"{name} has no attack '{attack}'; it has: {', '.join(attacks_of(record))}") from None


# ------------------------------------------------------------------------------ comparability
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _difference(x: Any, y: Any, path: str) -> tuple[str, Any, Any] | None:
    """First place where two JSON values differ, as (dotted path, value in x, value in y), or None.

    Numbers are equal within a tiny tolerance: a value that went through a JSON round trip or was
    computed as 8/255 on another machine must still match.
    """
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y), key=str):
            found = _difference(x.get(k, _MISSING), y.get(k, _MISSING), f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            found = _difference(u, v, f"{path}[{i}]")
            if found:
                return found
        return None
    if _is_number(x) and _is_number(y):
        return None if math.isclose(x, y, rel_tol=_REL_TOL, abs_tol=_ABS_TOL) else (path, x, y)
    return None if x == y else (path, x, y)


def _show(value: Any) -> str:
    if value is _MISSING:
        return "not recorded"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(record: dict, keys: tuple[str, ...]) -> Any:
    value: Any = record
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            return _MISSING
        value = value[k]
    return value


# settings that must agree for two records' numbers to be comparable at all
_SETTINGS = (("data.name", ("data", "name")), ("data.split", ("data", "split")), ("eps", ("eps",)),
             ("attacks", ("attacks",)), ("attack_args", ("attack_args",)), ("eot", ("eot",)),
             ("draws", ("draws",)))


_EOT_KEYS = ("eot", "eot_iter")


def _protocol(record: dict, attacks: list[str] | None) -> dict:
    """The fields that must agree, restricted to what the comparison uses.

    EOT and draws are part of the protocol only between two randomized records: a deterministic
    model is judged by its one prediction (EOT 1, 1 draw), which is what the rule gives it. Attack
    settings are compared for the attacks compared (every attack for `worst`), EOT keys aside.
    """
    out = dict(record)
    listed = record.get("attacks")
    if attacks is not None and "worst" not in attacks and isinstance(listed, list):
        out["attacks"] = [a for a in listed if a in attacks]
    args = record.get("attack_args")
    if isinstance(args, dict):
        keep = out.get("attacks") if isinstance(out.get("attacks"), list) else list(args)
        out["attack_args"] = {k: {kk: vv for kk, vv in v.items() if kk not in _EOT_KEYS} if isinstance(v, dict) else v
                              for k, v in args.items() if k in keep}
    return out


def check_comparable(a: dict, b: dict, name_a: str, name_b: str, attacks: list[str] | None = None) -> None:
    """Refuse (DarhtError) two records evaluated under different settings or on different examples.

    A field recorded in one record and not the other counts as different: an older record's EOT or
    draws are unknown, and a comparison cannot assume them. `attacks`: the attacks to be compared
    (None: all; `worst` needs the same attack list in both).
    """
    both_random = a.get("randomized") is True and b.get("randomized") is True
    a, b = _protocol(a, attacks), _protocol(b, attacks)
    for label, keys in _SETTINGS:
        if label in ("eot", "draws") and not both_random and "randomized" in a and "randomized" in b:
            continue
        va, vb = _field(a, keys), _field(b, keys)
        if va is _MISSING and vb is _MISSING:
            continue
        if label == "attacks" and isinstance(va, list) and isinstance(vb, list):
            va, vb = sorted(map(str, va)), sorted(map(str, vb))   # the order attacks ran in is irrelevant
        found = _difference(va, vb, label)
        if found:
            where, x, y = found
            raise DarhtError(f"{name_a} and {name_b} are not comparable: {where} differs "
                             f"({_show(x)} vs {_show(y)})")
    if has_examples(a) and has_examples(b):
        ia, ib = _index(a, name_a), _index(b, name_b)
        if not np.array_equal(np.sort(ia), np.sort(ib)):
            only_a, only_b = len(np.setdiff1d(ia, ib)), len(np.setdiff1d(ib, ia))
            raise DarhtError(f"{name_a} and {name_b} are not comparable: examples.index differs "
                             f"({len(ia)} vs {len(ib)} examples; {only_a} only in {name_a}, "
                             f"{only_b} only in {name_b})")


# ------------------------------------------------------------------------------ per-example results
def has_examples(record: dict) -> bool:
    ex = record.get("examples")
    return isinstance(ex, dict) and "index" in ex


def _examples(record: dict, name: str) -> dict:
    if not has_examples(record):
        raise DarhtError(f"{name} {NO_EXAMPLES}")
    return record["examples"]


def _index(record: dict, name: str) -> np.ndarray:
    """examples.index as an int array, checked: non-empty, integers, no repeats (alignment needs that)."""
    index = np.asarray(_examples(record, name)["index"])
    if index.ndim != 1 or index.size == 0:
        raise DarhtError(f"{name}: examples.index is empty or not a list")
    if not np.issubdtype(index.dtype, np.integer):
        raise DarhtError(f"{name}: examples.index must hold integers")
    if len(np.unique(index)) != len(index):
        raise DarhtError(f"{name}: examples.index repeats an example")
    return index


def _per_example(record: dict, name: str, *keys: str) -> np.ndarray:
    """A per-example float array (examples.<keys>), checked to have one entry per example."""
    ex = _examples(record, name)
    where = "examples." + ".".join(keys)
    value: Any = ex
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            raise DarhtError(f"{name} has no per-example {where}")
        value = value[k]
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise DarhtError(f"{name}: {where} must be a list of numbers") from None
    n = len(ex["index"])
    if arr.shape != (n,):
        raise DarhtError(f"{name}: {where} has {arr.size} entries, examples.index has {n}")
    return arr


def per_example_w_robust(record: dict, attack: str, name: str = "record") -> np.ndarray:
    """w_i = (clean_i + robust[attack]_i) / 2 for each example, in the record's order."""
    return (_per_example(record, name, "clean") + _per_example(record, name, "robust", attack)) / 2


def strict_verdicts(record: dict, attack: str, name: str) -> np.ndarray:
    """Per-example strict verdict (correct in all draws) as bool; must be 0/1."""
    arr = _per_example(record, name, "strict", attack)
    if not np.isin(arr, (0.0, 1.0)).all():
        raise DarhtError(f"{name}: examples.strict.{attack} must hold only 0 and 1")
    return arr.astype(bool)


def align_examples(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> tuple[np.ndarray, np.ndarray]:
    """Positions (pos_a, pos_b) of the examples both records hold, matched by example index.

    Ordered by example index, so a record whose examples are stored in another order gives exactly
    the same paired statistics (the bootstrap included).
    """
    ia, ib = _index(a, name_a), _index(b, name_b)
    shared, pos_a, pos_b = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
    if len(shared) == 0:
        raise DarhtError(f"{name_a} and {name_b} share no examples")
    return pos_a, pos_b


def record_w_robust(record: dict, attack: str, name: str = "record") -> float:
    """A record's W-Robust under `attack`: mean over its examples, else its summary (older records)."""
    if has_examples(record):
        return float(per_example_w_robust(record, attack, name).mean())
    try:
        return float(record["summary"]["w_robust"][attack]["mean"])
    except (KeyError, TypeError):
        values = w_robust_per_trial(record, attack, name)
        return sum(values) / len(values)


# ------------------------------------------------------------------------------ CLI arguments
def _split_item(item: str) -> tuple[str | None, str]:
    """'NAME=PATH' -> (NAME, PATH); a plain path (existing, or with '/' before any '=') -> (None, PATH)."""
    name, sep, path = item.partition("=")
    if not sep or Path(item).exists() or "/" in name or os.sep in name:
        return None, item
    if not name or not path:
        raise DarhtError(f"'{item}': expected PATH or NAME=PATH")
    return name, path


def parse_record_args(items: list[str]) -> dict[str, list[tuple[str, dict]]]:
    """`darht compare` positionals: PATH is its own method; NAME=PATH items with one NAME form a method."""
    paths: dict[str, list[str]] = {}
    for item in items:
        name, path = _split_item(item)
        if name is None:
            if path in paths:
                raise DarhtError(f"{path} is given twice")
            paths[path] = [path]
        else:
            paths.setdefault(name, []).append(path)
    if len(paths) < 2:
        raise DarhtError(NEED_TWO)
    return {name: [(p, read_record(p)) for p in group] for name, group in paths.items()}
