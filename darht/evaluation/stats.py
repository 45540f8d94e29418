"""Comparing evaluation records (`darht compare`).

Record A against record B, both evaluated on the same examples under the same settings:

- paired tests on the shared examples (records with per-example results, `examples`): the exact
  McNemar test on strict per-example robustness, a paired bootstrap confidence interval of the
  W-Robust difference and the sign-flip permutation p of that same difference. Pairing by example
  removes the example-to-example variance, which is far larger than the difference between two
  models, so these tests see differences that unpaired ones miss;
- the two-sided Mann-Whitney U test on per-trial W-Robust (paper, section 4.2), kept next to them.
  It assumes independent samples, which overlapping trials are not (it is then flagged).

Several records per method (one per training seed) are also compared across seeds: Welch's t-test
and CI on each record's mean W-Robust, the variance that matters when the claim is about the
training method rather than one trained model.

Per-example W-Robust of example i under attack a is w_i = (clean_i + robust[a]_i) / 2, so a record's
W-Robust is the mean of w_i over its examples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import binomtest, mannwhitneyu, ttest_ind
from scipy.stats import t as student_t

from darht.errors import DarhtError
from darht.evaluation.comparable import (NEED_TWO, NO_EXAMPLES, align_examples, attacks_of, check_comparable,
                                         common_attacks, has_examples, per_example_w_robust, record_w_robust,
                                         strict_verdicts, w_robust_per_trial)

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0
OVERLAP_NOTE = "trials overlap: Mann-Whitney p is not valid for independent samples"

# bootstrap draws per chunk (resamples x examples): bounds memory at ~16 MB whatever the sizes
_CHUNK_DRAWS = 1 << 20


# ------------------------------------------------------------------------------ paired tests
def mcnemar(a: dict, b: dict, attack: str, name_a: str = "A", name_b: str = "B") -> dict:
    """Exact McNemar test on the strict per-example robustness of A vs B under `attack`.

    b = #(A robust, B not), c = #(B robust, A not); under H0 each discordant pair is equally likely
    either way, so b ~ Binomial(b + c, 1/2) and p is the two-sided exact binomial test on it
    (McNemar 1947, Psychometrika 12:153-157; exact conditional form as in Fagerland, Lydersen &
    Laake 2013, BMC Med. Res. Methodol. 13:91). p = 1 without discordant pairs.
    """
    pos_a, pos_b = align_examples(a, b, name_a, name_b)
    sa, sb = strict_verdicts(a, attack, name_a)[pos_a], strict_verdicts(b, attack, name_b)[pos_b]
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


def sign_flip_p(d: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Two-sided paired permutation p of mean(d) = 0: under H0 the labels A/B of each example are
    exchangeable, so each difference d_i keeps or flips its sign with probability 1/2 (Fisher 1935,
    The Design of Experiments, sec. 21; Good 2005, Permutation, Parametric and Bootstrap Tests of
    Hypotheses, ch. 3). Exact over all 2^n sign patterns when 2^n <= resamples, else `resamples`
    seeded random patterns with p = (1 + hits) / (1 + resamples). It tests the same quantity as the
    bootstrap interval (mean per-example W-Robust difference), also for randomized models whose
    per-example values are fractions, where McNemar's 0/1 verdicts are a different statistic."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    observed = abs(d.mean()) - 1e-12 * max(1.0, float(np.abs(d).max(initial=0.0)))  # ties count as hits
    if n == 0 or not d.any():
        return 1.0
    if n <= 20 and 2 ** n <= resamples:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ d) / n >= observed))
    rng = np.random.default_rng(seed)
    hits, rows = 0, max(1, _CHUNK_DRAWS // n)
    for start in range(0, resamples, rows):
        k = min(rows, resamples - start)
        signs = rng.integers(0, 2, size=(k, n)) * 2 - 1
        hits += int(np.sum(np.abs(signs @ d) / n >= observed))
    return (1 + hits) / (1 + resamples)


def paired_permutation(a: dict, b: dict, attack: str, name_a: str = "A", name_b: str = "B", *,
                       resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """The sign-flip permutation test of the per-example W-Robust differences A - B (see sign_flip_p)."""
    pos_a, pos_b = align_examples(a, b, name_a, name_b)
    d = per_example_w_robust(a, attack, name_a)[pos_a] - per_example_w_robust(b, attack, name_b)[pos_b]
    return {"p_value": sign_flip_p(d, resamples, seed), "resamples": resamples, "seed": seed, "n": int(len(d))}


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
                           "bootstrap": None, "permutation": None, "mcnemar": None, "mann_whitney": None,
                           "trials_overlap": trials_overlap(a, b), "notes": []}
    lacking = [n for n, r in ((name_a, a), (name_b, b)) if not has_examples(r)]
    if lacking:
        row["notes"] += [f"{n} {NO_EXAMPLES} (paired tests skipped)" for n in lacking]
    else:
        row["bootstrap"] = bootstrap_diff(a, b, attack, name_a, name_b, resamples=resamples, seed=seed, level=level)
        row["permutation"] = paired_permutation(a, b, attack, name_a, name_b, resamples=resamples, seed=seed)
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
            if attack not in attacks_of(rec):
                raise DarhtError(f"{path} has no attack '{attack}'; it has: {', '.join(attacks_of(rec))}")
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
