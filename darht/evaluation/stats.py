"""Comparing evaluation records: two-sided Mann-Whitney U on per-trial W-Robust (paper 4.2)."""

from __future__ import annotations

import json
from pathlib import Path

from scipy.stats import mannwhitneyu

from darht.errors import DarhtError


def read_record(path: str | Path) -> dict:
    p = Path(path)
    try:
        rec = json.loads(p.read_text())
    except FileNotFoundError:
        raise DarhtError(f"record not found: {p}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DarhtError(f"{p}: not a JSON evaluation record") from None
    if not isinstance(rec, dict) or "trials" not in rec or "summary" not in rec:
        raise DarhtError(f"{p}: not a darht evaluation record (no 'trials'/'summary')")
    return rec


def w_robust_per_trial(record: dict, attack: str) -> list[float]:
    try:
        return [t["w_robust"][attack] for t in record["trials"]]
    except KeyError:
        raise DarhtError(f"record has no attack '{attack}'; it has: "
                         f"{', '.join(record['summary']['w_robust'])}") from None


def compare(a: dict, b: dict, attack: str) -> dict:
    """Two-sided Mann-Whitney U test of record a vs b on per-trial W-Robust under `attack`."""
    xa, xb = w_robust_per_trial(a, attack), w_robust_per_trial(b, attack)
    if len(xa) < 2 or len(xb) < 2:
        raise DarhtError("compare needs records with at least 2 trials each (darht evaluate --trials T)")
    res = mannwhitneyu(xa, xb, alternative="two-sided")
    return {"attack": attack, "u": float(res.statistic), "p_value": float(res.pvalue),
            "mean_a": sum(xa) / len(xa), "mean_b": sum(xb) / len(xb), "n_a": len(xa), "n_b": len(xb)}


def common_attacks(records: list[dict]) -> list[str]:
    names = [set(r["summary"]["w_robust"]) for r in records]
    first = list(records[0]["summary"]["w_robust"])
    return [k for k in first if all(k in s for s in names)]
