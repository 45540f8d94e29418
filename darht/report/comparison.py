"""The Markdown table of a `darht compare` result (darht.evaluation.stats.compare_groups)."""

from __future__ import annotations

from darht.evaluation.stats import LEVEL

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
    boot, mc, mw, perm = r["bootstrap"], r["mcnemar"], r["mann_whitney"], r.get("permutation")
    diff = _diff_ci(boot["diff"], boot["ci"]) if boot else _diff_ci(r["w_robust_a"] - r["w_robust_b"], None)
    cells = [_label(r["group_a"], r["a"]), _label(r["group_b"], r["b"]), r["attack"],
             _pct(r["w_robust_a"]), _pct(r["w_robust_b"]), diff, _p(perm["p_value"] if perm else None),
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
                "| sign-flip p | McNemar b | McNemar c | McNemar p (strict) | MWU U | MWU p |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
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
