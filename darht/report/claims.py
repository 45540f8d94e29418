"""The claims table: one row per paper claim, with a verdict, an effect size, its interval and a p.

A study declares its claims (a pipeline config's `claims`, stored as `RUN/claims.json` so that
`darht report` can rebuild the table from the run directory alone):

    - id: table3-rslad                  # short and unique
      paper: "4.2 / Table 3"            # where the paper makes the claim
      claim: "DARHT's student is more robust than RSLAD's"
      a: darht                          # a student group: the records student-darht-s<k> (or
      b: rslad                          #   student-darht), `NAME@deterministic` for the MC
      attack: worst                     #   students' dropout-off face; an exact stage name works too
      expect: greater                   # greater (a > b) or less (a < b), in W-Robust

Statistics (darht.evaluation.stats.compare_groups, the same as `darht compare`):
  - both groups with >= 2 training seeds: Welch's t-test across seeds on each record's W-Robust
    (the training randomness is what varies; the test examples are the same for every record);
  - one record each: the paired bootstrap CI of the W-Robust difference on the shared examples and
    the sign-flip permutation p of that same difference (McNemar's p, on strict 0/1 verdicts, tests
    another quantity for a randomized model, so `darht compare` shows it but the claim does not);
  - otherwise (one side with several seeds, the other with one): every pair is compared and the
    row shows the pair of seed 0s, with a note.
A transferability claim (paper 4.1) names a source and two targets instead, and is tested on the
transfer record's teacher matrix (`records/transfer.json`): the rate of examples crafted on
`source` that fool `a` vs `b`, on the same crafted examples:

    - {id: t41, paper: "4.1", claim: "a CNN's examples transfer less to a ViT than to a CNN",
       source: cnn-fat1, a: vit-fat1, b: cnn-fat2, expect: less}

with effect = rate(source -> a) - rate(source -> b), a paired bootstrap CI over the examples
(the ratio of sums resampled), and for deterministic models the exact McNemar p on the examples
that fool the source.
Verdict at the interval's level (95%): `reproduced` when the interval lies entirely on the
expected side of 0, `contradicted` when it lies entirely on the other side, else `not shown`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from scipy.stats import binomtest

from darht.errors import DarhtError
from darht.evaluation.stats import LEVEL, RESAMPLES, SEED, compare_groups

KEYS = {"id", "paper", "claim", "a", "b", "attack", "expect"}
TRANSFER_KEYS = {"id", "paper", "claim", "source", "a", "b", "expect"}
EXPECT = ("greater", "less")


def check_claims(claims: Any) -> list[dict]:
    """The claims, checked (DarhtError naming the first problem)."""
    if not isinstance(claims, list):
        raise DarhtError("config: claims must be a list of {id, paper, claim, a, b, attack, expect}")
    seen = set()
    for i, c in enumerate(claims):
        where = f"claims[{i}]"
        if not isinstance(c, dict):
            raise DarhtError(f"config: {where} must be a mapping")
        keys = TRANSFER_KEYS if "source" in c else KEYS
        missing, unknown = sorted(keys - {"attack"} - set(c)), sorted(set(c) - keys)
        if missing or unknown:
            raise DarhtError(f"config: {where}: " + (f"missing {', '.join(missing)}" if missing
                                                     else f"unknown key '{unknown[0]}'; known: {', '.join(sorted(keys))}"))
        if c["expect"] not in EXPECT:
            raise DarhtError(f"config: {where}.expect must be one of {', '.join(EXPECT)}, got {c['expect']!r}")
        if c["id"] in seen:
            raise DarhtError(f"config: {where}: claim id '{c['id']}' is used twice")
        seen.add(c["id"])
    return [c if "source" in c else {"attack": "worst", **c} for c in claims]


def check_convergence(c: Any) -> dict | None:
    """A study's convergence criterion, checked: {last: int >= 2, max_spread: number in (0, 1]}
    (a run is flat when its validation PGD accuracy over the last `last` epochs spans less than
    `max_spread`; the report says so per run)."""
    if c is None:
        return None
    if not isinstance(c, dict) or set(c) != {"last", "max_spread"}:
        raise DarhtError("config: convergence must be {last: EPOCHS, max_spread: FRACTION}")
    last, spread = c["last"], c["max_spread"]
    if not isinstance(last, int) or isinstance(last, bool) or last < 2:
        raise DarhtError(f"config: convergence.last must be an integer >= 2, got {last!r}")
    if not isinstance(spread, (int, float)) or isinstance(spread, bool) or not 0 < spread <= 1:
        raise DarhtError(f"config: convergence.max_spread must be a number in (0, 1], got {spread!r}")
    return {"last": last, "max_spread": float(spread)}


def resolve(ref: str, records: dict[str, dict]) -> list[tuple[str, dict]]:
    """A group reference -> its (name, record) list: `NAME` (student-NAME or student-NAME-s<k>,
    by seed) or an exact record name; `@deterministic` takes the dropout-off face."""
    name, _, face = ref.partition("@")
    if face not in ("", "deterministic"):
        raise DarhtError(f"claims: unknown face '@{face}' in '{ref}' (only @deterministic)")
    exact = [k for k in (name, f"student-{name}") if k in records]
    if exact:
        found = [(exact[0], records[exact[0]])]
    else:
        pattern = re.compile(rf"student-{re.escape(name)}-s(\d+)$")
        hits = sorted((int(m.group(1)), k) for k in records if (m := pattern.match(k)))
        found = [(k, records[k]) for _, k in hits]
    if not found:
        raise DarhtError(f"claims: no record for '{ref}' (records: {', '.join(sorted(records))})")
    if face:
        out = []
        for k, rec in found:
            det = (rec.get("faces") or {}).get("deterministic")
            if det is None:
                raise DarhtError(f"claims: {k} has no deterministic face (not an MC student, or faces off)")
            out.append((f"{k}@deterministic", {**rec, **det}))
        return out
    return found


def verdict(ci: list[float] | None, expect: str) -> str:
    """`reproduced` / `contradicted`: the interval lies entirely on the expected / the other side
    of 0; `not shown` otherwise (or without an interval)."""
    if ci is None:
        return "not shown"
    sign = 1 if expect == "greater" else -1
    lo, hi = sorted((sign * ci[0], sign * ci[1]))
    return "reproduced" if lo > 0 else "contradicted" if hi < 0 else "not shown"


def evaluate_claim(claim: dict, records: dict[str, dict]) -> dict:
    """One claim's row: groups, method, effect (a - b, W-Robust), interval, p, verdict, notes."""
    a, b = resolve(claim["a"], records), resolve(claim["b"], records)
    result = compare_groups({claim["a"]: a, claim["b"]: b}, [claim["attack"]])
    notes: list[str] = []
    if result["seeds"]:
        s = result["seeds"][0]
        test, effect, ci, p = "Welch across seeds", s["diff"], s["ci"], s["p_value"]
        notes += s["notes"]
    else:
        pair = result["pairs"][0]
        if len(result["pairs"]) > 1:
            notes.append(f"{len(a)} vs {len(b)} records: the row shows {pair['a']} vs {pair['b']}")
        boot, perm = pair["bootstrap"], pair["permutation"]
        test = "paired bootstrap + sign-flip"
        effect = boot["diff"] if boot else pair["w_robust_a"] - pair["w_robust_b"]
        ci, p = (boot["ci"] if boot else None), (perm["p_value"] if perm else None)
        notes += pair["notes"]
    if ci is None:
        notes.append("no interval could be computed")
    return {**claim, "records_a": [k for k, _ in a], "records_b": [k for k, _ in b], "test": test,
            "effect": effect, "ci": ci, "p_value": p, "level": result["settings"]["level"],
            "verdict": verdict(ci, claim["expect"]), "notes": notes}


def transfer_claim(claim: dict, transfer: dict | None) -> dict:
    """A transferability claim's row from the transfer record's teacher matrix (see the module doc)."""
    matrix = (transfer or {}).get("teacher_matrix") or {}
    fooled = matrix.get("fooled")
    if fooled is None:
        raise DarhtError(f"claims: {claim['id']} needs a transfer record with per-example outcomes "
                         "(records/transfer.json from this version's transfer stage)")
    for key in ("source", "a", "b"):
        known = fooled if key == "source" else fooled[claim["source"]]
        if claim[key] not in known or claim["source"] not in known:
            raise DarhtError(f"claims: {claim['id']}: '{claim[key]}' is not in the transfer matrix "
                             f"({', '.join(known)})")
    fs, fa, fb = (np.asarray(fooled[claim["source"]][claim[k]], dtype=float) for k in ("source", "a", "b"))
    notes: list[str] = []
    if fs.sum() == 0:
        return {**claim, "records_a": [claim["a"]], "records_b": [claim["b"]], "test": "paired bootstrap",
                "effect": 0.0, "ci": None, "p_value": None, "level": LEVEL, "verdict": "not shown",
                "notes": ["the source's examples fooled the source nowhere: no rate"]}
    effect = float((fs * (fa - fb)).sum() / fs.sum())
    rng = np.random.default_rng(SEED)
    diffs = []
    for start in range(0, RESAMPLES, 1000):  # chunks bound the memory
        idx = rng.integers(0, len(fs), size=(min(1000, RESAMPLES - start), len(fs)))
        den = fs[idx].sum(1)
        ok = den > 0
        diffs.append(((fs[idx] * (fa[idx] - fb[idx])).sum(1)[ok] / den[ok]))
    d = np.concatenate(diffs)
    ci = [float(np.quantile(d, (1 - LEVEL) / 2)), float(np.quantile(d, (1 + LEVEL) / 2))]
    exact = all(np.isin(v, (0.0, 1.0)).all() for v in (fs, fa, fb))
    p = None
    if exact:
        hit = fs == 1
        wins, losses = int((hit & (fa == 1) & (fb == 0)).sum()), int((hit & (fa == 0) & (fb == 1)).sum())
        p = 1.0 if wins + losses == 0 else float(binomtest(wins, wins + losses, 0.5).pvalue)
    else:
        notes.append("a randomized model: no exact McNemar p (the interval decides)")
    return {**claim, "attack": f"transfer from {claim['source']} ({transfer.get('attack', 'pgd')})",
            "records_a": [claim["a"]], "records_b": [claim["b"]],
            "test": "paired bootstrap" + (" + McNemar" if exact else ""), "effect": effect, "ci": ci,
            "p_value": p, "level": LEVEL, "verdict": verdict(ci, claim["expect"]), "notes": notes}


def claims_table(claims: list[dict], records: dict[str, dict], transfer: dict | None = None) -> list[dict]:
    return [transfer_claim(c, transfer) if "source" in c else evaluate_claim(c, records) for c in check_claims(claims)]


def claims_markdown(rows: list[dict]) -> str:
    level = round(100 * rows[0]["level"]) if rows else 95
    out = [f"| claim | paper | A vs B ({'attack'}) | expected | effect A - B (pp) [{level}% CI] | p | test | verdict |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "" if r["ci"] is None else f" [{100 * r['ci'][0]:+.2f}, {100 * r['ci'][1]:+.2f}]"
        p = "n/a" if r["p_value"] is None else f"{r['p_value']:.3g}"
        out.append(f"| {r['claim']} | {r['paper']} | {r['a']} ({len(r['records_a'])}) vs {r['b']} "
                   f"({len(r['records_b'])}), {r['attack']} | A {'>' if r['expect'] == 'greater' else '<'} B | "
                   f"{100 * r['effect']:+.2f}{ci} | {p} | {r['test']} | **{r['verdict']}** |")
    notes = [f"- {r['id']}: {n}" for r in rows for n in r["notes"]]
    return "\n".join(out + (["", "Notes:", *notes] if notes else []))
