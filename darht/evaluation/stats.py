"""Comparing evaluation records (`darht compare`).

Record A against record B, both evaluated on the same examples under the same settings:

- paired tests on the shared examples (records with per-example results, `examples`): the exact
  McNemar test on strict per-example robustness and a paired bootstrap confidence interval of the
  W-Robust difference. Pairing by example removes the example-to-example variance, which is far
  larger than the difference between two models, so these tests see differences that unpaired
  ones miss;
- the two-sided Mann-Whitney U test on per-trial W-Robust (paper, section 4.2), kept next to them.
  It assumes independent samples, which overlapping trials are not (it is then flagged).

Several records per method (one per training seed) are also compared across seeds: Welch's t-test
and CI on each record's mean W-Robust, the variance that matters when the claim is about the
training method rather than one trained model.

Per-example W-Robust of example i under attack a is w_i = (clean_i + robust[a]_i) / 2, so a record's
W-Robust is the mean of w_i over its examples.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest, mannwhitneyu, ttest_ind
from scipy.stats import t as student_t

from darht.errors import DarhtError

WORST = "worst"
LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0
NEED_TWO = "compare needs at least two methods (records or NAME=PATH groups)"
OVERLAP_NOTE = "trials overlap: Mann-Whitney p is not valid for independent samples"
NO_EXAMPLES = "has no per-example results; re-run darht evaluate"

# bootstrap draws per chunk (resamples x examples): bounds memory at ~16 MB whatever the sizes
_CHUNK_DRAWS = 1 << 20
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
    if p.is_dir():
        raise DarhtError(f"{p}: is a directory, not an evaluation record file")
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DarhtError(f"record not found: {p}") from None
    except UnicodeDecodeError:
        raise DarhtError(f"{p}: not UTF-8 text, so not a JSON evaluation record") from None
    except OSError as e:
        raise DarhtError(f"{p}: cannot be read ({e.strerror})") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise DarhtError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None
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


def _attacks_of(record: dict) -> list[str]:
    """Attack names a record has results for, in its order (summary, then per-example results)."""
    names = list(record.get("summary", {}).get("w_robust", {}))
    ex = record.get("examples")
    if isinstance(ex, dict) and isinstance(ex.get("robust"), dict):
        names += [k for k in ex["robust"] if k not in names]
    return names


def common_attacks(records: list[dict]) -> list[str]:
    """Attacks every record has, in the first record's order, with "worst" (when all have it) last."""
    have = [set(_attacks_of(r)) for r in records]
    names = [k for k in _attacks_of(records[0]) if all(k in s for s in have)]
    # "worst" is the headline number; keep it, and last, so tables end with it
    if WORST in names:
        names = [k for k in names if k != WORST] + [WORST]
    return names


def w_robust_per_trial(record: dict, attack: str, name: str = "record") -> list[float]:
    """The W-Robust of each trial of `record` under `attack`."""
    try:
        return [float(t["w_robust"][attack]) for t in record["trials"]]
    except (KeyError, TypeError):
        raise DarhtError(f"{name} has no attack '{attack}'; it has: {', '.join(_attacks_of(record))}") from None


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
    if _has_examples(a) and _has_examples(b):
        ia, ib = _index(a, name_a), _index(b, name_b)
        if not np.array_equal(np.sort(ia), np.sort(ib)):
            only_a, only_b = len(np.setdiff1d(ia, ib)), len(np.setdiff1d(ib, ia))
            raise DarhtError(f"{name_a} and {name_b} are not comparable: examples.index differs "
                             f"({len(ia)} vs {len(ib)} examples; {only_a} only in {name_a}, "
                             f"{only_b} only in {name_b})")


# ------------------------------------------------------------------------------ per-example results
def _has_examples(record: dict) -> bool:
    ex = record.get("examples")
    return isinstance(ex, dict) and "index" in ex


def _examples(record: dict, name: str) -> dict:
    if not _has_examples(record):
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


def _strict(record: dict, attack: str, name: str) -> np.ndarray:
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
    if _has_examples(record):
        return float(per_example_w_robust(record, attack, name).mean())
    try:
        return float(record["summary"]["w_robust"][attack]["mean"])
    except (KeyError, TypeError):
        values = w_robust_per_trial(record, attack, name)
        return sum(values) / len(values)


# ------------------------------------------------------------------------------ paired tests
def mcnemar(a: dict, b: dict, attack: str, name_a: str = "A", name_b: str = "B") -> dict:
    """Exact McNemar test on the strict per-example robustness of A vs B under `attack`.

    b = #(A robust, B not), c = #(B robust, A not); under H0 each discordant pair is equally likely
    either way, so b ~ Binomial(b + c, 1/2) and p is the two-sided exact binomial test on it
    (McNemar 1947, Psychometrika 12:153-157; exact conditional form as in Fagerland, Lydersen &
    Laake 2013, BMC Med. Res. Methodol. 13:91). p = 1 without discordant pairs.
    """
    pos_a, pos_b = align_examples(a, b, name_a, name_b)
    sa, sb = _strict(a, attack, name_a)[pos_a], _strict(b, attack, name_b)[pos_b]
    only_a, only_b = int(np.sum(sa & ~sb)), int(np.sum(sb & ~sa))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"b": only_a, "c": only_b, "p_value": p, "n": int(len(pos_a))}


def _bootstrap_means(d: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `resamples` with-replacement resamples of d, drawn in chunks to bound memory."""
    n = len(d)
    rows = max(1, _CHUNK_DRAWS // n)
    means = np.empty(resamples)
    for start in range(0, resamples, rows):
        k = min(rows, resamples - start)
        picks = rng.integers(0, n, size=(k, n))
        means[start:start + k] = d[picks].mean(axis=1)
    return means


def bootstrap_diff(a: dict, b: dict, attack: str, name_a: str = "A", name_b: str = "B", *,
                   resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict:
    """Paired bootstrap CI of the W-Robust difference A - B over the shared examples.

    Resamples example positions with replacement (the same positions for A and B, which keeps the
    pairing) and takes the percentile interval of the resampled mean differences (Efron &
    Tibshirani 1993, An Introduction to the Bootstrap, ch. 13). Seeded: same seed, same interval.
    """
    if resamples < 1 or not 0 < level < 1:
        raise DarhtError(f"bootstrap needs resamples >= 1 and 0 < level < 1 (got {resamples}, {level})")
    pos_a, pos_b = align_examples(a, b, name_a, name_b)
    d = per_example_w_robust(a, attack, name_a)[pos_a] - per_example_w_robust(b, attack, name_b)[pos_b]
    means = _bootstrap_means(d, resamples, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(d.mean()), "ci": [float(lo), float(hi)], "level": level,
            "resamples": resamples, "seed": seed, "n": int(len(d))}


# ------------------------------------------------------------------------------ unpaired tests
def compare(a: dict, b: dict, attack: str, name_a: str = "record A", name_b: str = "record B") -> dict:
    """Two-sided Mann-Whitney U test of record a vs b on per-trial W-Robust under `attack` (paper 4.2).

    Mann & Whitney 1947, Ann. Math. Statist. 18:50-60. U is the statistic for a's sample.
    """
    xa, xb = w_robust_per_trial(a, attack, name_a), w_robust_per_trial(b, attack, name_b)
    for name, x in ((name_a, xa), (name_b, xb)):
        if len(x) < 2:
            raise DarhtError(f"Mann-Whitney needs at least 2 trials per record; {name} has {len(x)} "
                             "(darht evaluate --trials T)")
    res = mannwhitneyu(xa, xb, alternative="two-sided")
    return {"attack": attack, "u": float(res.statistic), "p_value": float(res.pvalue),
            "mean_a": sum(xa) / len(xa), "mean_b": sum(xb) / len(xb), "n_a": len(xa), "n_b": len(xb)}


mann_whitney = compare


def trials_overlap(a: dict, b: dict) -> bool:
    """True unless both records say their trials are disjoint (older records do not say)."""
    return not (a.get("trials_disjoint") is True and b.get("trials_disjoint") is True)


def welch(xa: list[float], xb: list[float], level: float = LEVEL) -> dict:
    """Welch's t-test of mean(xa) vs mean(xb) and the CI of their difference.

    se^2 = s_a^2/n_a + s_b^2/n_b; df by Welch-Satterthwaite,
    df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)) (Welch 1947, Biometrika 34:28-35;
    Satterthwaite 1946, Biometrics Bull. 2:110-114); CI = diff +- t_{(1+level)/2, df} * se.
    With no spread in either group the test is undefined: t, df and p are None, the CI a point.
    """
    xa_, xb_ = np.asarray(xa, dtype=float), np.asarray(xb, dtype=float)
    na, nb = len(xa_), len(xb_)
    if na < 2 or nb < 2:
        raise DarhtError(f"Welch's t-test needs at least 2 records per method (got {na} and {nb})")
    diff = float(xa_.mean() - xb_.mean())
    va, vb = xa_.var(ddof=1) / na, xb_.var(ddof=1) / nb
    se = math.sqrt(va + vb)
    out = {"n_a": na, "n_b": nb, "mean_a": float(xa_.mean()), "mean_b": float(xb_.mean()), "diff": diff,
           "level": level, "t": None, "df": None, "p_value": None, "ci": [diff, diff]}
    if se == 0:
        return out
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    res = ttest_ind(xa_, xb_, equal_var=False)
    half = float(student_t.ppf((1 + level) / 2, df)) * se
    out.update(t=float(res.statistic), df=float(df), p_value=float(res.pvalue), ci=[diff - half, diff + half])
    return out


# ------------------------------------------------------------------------------ comparing methods
def compare_pair(a: dict, b: dict, attack: str, name_a: str, name_b: str, *,
                 resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict:
    """Every test that the two records allow, under one attack; what cannot be done says why in notes."""
    row: dict[str, Any] = {"a": name_a, "b": name_b, "attack": attack,
                           "w_robust_a": record_w_robust(a, attack, name_a),
                           "w_robust_b": record_w_robust(b, attack, name_b),
                           "bootstrap": None, "mcnemar": None, "mann_whitney": None,
                           "trials_overlap": trials_overlap(a, b), "notes": []}
    lacking = [n for n, r in ((name_a, a), (name_b, b)) if not _has_examples(r)]
    if lacking:
        row["notes"] += [f"{n} {NO_EXAMPLES} (paired tests skipped)" for n in lacking]
    else:
        row["bootstrap"] = bootstrap_diff(a, b, attack, name_a, name_b, resamples=resamples, seed=seed, level=level)
        row["mcnemar"] = mcnemar(a, b, attack, name_a, name_b)
    few = [(n, len(r["trials"])) for n, r in ((name_a, a), (name_b, b)) if len(r["trials"]) < 2]
    if few:
        row["notes"] += [f"Mann-Whitney needs at least 2 trials per record; {n} has {k}" for n, k in few]
    else:
        mwu = compare(a, b, attack, name_a, name_b)
        row["mann_whitney"] = {k: v for k, v in mwu.items() if k != "attack"}
        if row["trials_overlap"]:
            row["notes"].append(OVERLAP_NOTE)
    return row


def across_seeds(group_a: list[tuple[str, dict]], group_b: list[tuple[str, dict]], attack: str,
                 level: float = LEVEL) -> dict:
    """Welch's t-test on the records' mean W-Robust: one value per training seed."""
    xa = [record_w_robust(r, attack, p) for p, r in group_a]
    xb = [record_w_robust(r, attack, p) for p, r in group_b]
    row = {"attack": attack, "w_robust_a": xa, "w_robust_b": xb, **welch(xa, xb, level), "notes": []}
    if row["p_value"] is None:
        row["notes"].append("no spread across seeds in either method: Welch's t-test is undefined")
    return row


def _record_pairs(base: list, other: list) -> list[tuple]:
    """Seed i vs seed i when the methods have as many records, otherwise every pair."""
    if len(base) == len(other):
        return list(zip(base, other))
    return [(x, y) for x in base for y in other]


def _resolve_attacks(records: list[tuple[str, dict]], attacks: list[str] | None) -> list[str]:
    if attacks is None:
        found = common_attacks([r for _, r in records])
        if not found:
            raise DarhtError("the records have no attack in common")
        return found
    for path, rec in records:
        for attack in attacks:
            if attack not in _attacks_of(rec):
                raise DarhtError(f"{path} has no attack '{attack}'; it has: {', '.join(_attacks_of(rec))}")
    return list(attacks)


def compare_groups(groups: dict[str, list[tuple[str, dict]]], attacks: list[str] | None = None, *,
                   resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict:
    """Compare every method with the first (the baseline), per attack; a JSON-serialisable result.

    `groups` maps a method name to its (path, record) list, one record per training seed. Every
    record must be comparable with the first one (same data, settings and examples).
    """
    if len(groups) < 2:
        raise DarhtError(NEED_TWO)
    for name, members in groups.items():
        if not members:
            raise DarhtError(f"method '{name}' has no records")
    everything = [m for members in groups.values() for m in members]
    ref_path, ref = everything[0]
    attacks = _resolve_attacks(everything, attacks)
    for path, rec in everything[1:]:
        check_comparable(ref, rec, ref_path, path, attacks)
    (base_name, base), *others = groups.items()
    pairs, seeds = [], []
    for name, members in others:
        for attack in attacks:
            for (pa, ra), (pb, rb) in _record_pairs(base, members):
                row = compare_pair(ra, rb, attack, pa, pb, resamples=resamples, seed=seed, level=level)
                pairs.append({"group_a": base_name, "group_b": name, **row})
            if len(base) >= 2 and len(members) >= 2:
                seeds.append({"group_a": base_name, "group_b": name, **across_seeds(base, members, attack, level)})
    tested = any(r["bootstrap"] or r["mann_whitney"] for r in pairs) or bool(seeds)
    if not tested:
        # nothing to report: say the first reason rather than print an empty table
        raise DarhtError(next(n for r in pairs for n in r["notes"]))
    return {"baseline": base_name, "groups": {n: [p for p, _ in m] for n, m in groups.items()},
            "attacks": attacks, "settings": {"resamples": resamples, "seed": seed, "level": level},
            "pairs": pairs, "seeds": seeds}


# ------------------------------------------------------------------------------ Markdown
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _p(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _diff_ci(diff: float, ci: list[float] | None) -> str:
    text = f"{100 * diff:+.2f}"
    return text if ci is None else f"{text} [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def _label(group: str, path: str) -> str:
    return path if group == path else f"{group}: {path}"


def _pair_line(r: dict) -> str:
    boot, mc, mw = r["bootstrap"], r["mcnemar"], r["mann_whitney"]
    diff = _diff_ci(boot["diff"], boot["ci"]) if boot else _diff_ci(r["w_robust_a"] - r["w_robust_b"], None)
    cells = [_label(r["group_a"], r["a"]), _label(r["group_b"], r["b"]), r["attack"],
             _pct(r["w_robust_a"]), _pct(r["w_robust_b"]), diff,
             str(mc["b"]) if mc else "n/a", str(mc["c"]) if mc else "n/a", _p(mc["p_value"] if mc else None),
             f"{mw['u']:.1f}" if mw else "n/a", _p(mw["p_value"] if mw else None)]
    return "| " + " | ".join(cells) + " |"


def _seed_line(r: dict) -> str:
    cells = [r["group_a"], r["group_b"], r["attack"], str(r["n_a"]), str(r["n_b"]),
             _pct(r["mean_a"]), _pct(r["mean_b"]), _diff_ci(r["diff"], r["ci"]),
             "n/a" if r["t"] is None else f"{r['t']:.2f}", "n/a" if r["df"] is None else f"{r['df']:.1f}",
             _p(r["p_value"])]
    return "| " + " | ".join(cells) + " |"


def _notes(rows: list[dict], who) -> list[str]:
    seen: list[str] = []
    for r in rows:
        for note in r["notes"]:
            line = f"- {who(r)}: {note}"
            if line not in seen:
                seen.append(line)
    return ["", "Notes:", *seen] if seen else []


def comparison_markdown(result: dict) -> str:
    """The result of compare_groups as Markdown: a table of record pairs, one across seeds, notes."""
    level = round(100 * result.get("settings", {}).get("level", LEVEL))
    out = [f"Baseline: {result['baseline']}. W-Robust in %, differences A - B in percentage points."]
    if result["pairs"]:
        out += ["", "## Record pairs (paired on shared examples)", "",
                f"| A | B | attack | W-Robust A (%) | W-Robust B (%) | diff [{level}% bootstrap CI] "
                "| McNemar b | McNemar c | McNemar p | MWU U | MWU p |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        out += [_pair_line(r) for r in result["pairs"]]
        out += _notes(result["pairs"], lambda r: f"{r['a']} vs {r['b']}")
    if result["seeds"]:
        out += ["", "## Across seeds (Welch's t-test on per-record W-Robust)", "",
                f"| group A | group B | attack | seeds A | seeds B | W-Robust A (%) | W-Robust B (%) "
                f"| diff [{level}% Welch CI] | t | df | Welch p |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        out += [_seed_line(r) for r in result["seeds"]]
        out += _notes(result["seeds"], lambda r: f"{r['group_a']} vs {r['group_b']} ({r['attack']})")
    return "\n".join(out)


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
