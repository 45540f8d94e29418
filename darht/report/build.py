"""`darht report RUN_DIR`: Markdown + CSV tables and PNG plots from a run directory's records."""

from __future__ import annotations

from pathlib import Path

from darht.engine.checkpoint import read_metrics
from darht.errors import DarhtError
from darht.report import plots, tables
from darht.report.claims import claims_markdown, claims_table
from darht.utils import atomic_write_json, atomic_write_text, read_json


def write_report(run_dir: str | Path) -> Path:
    run = Path(run_dir)
    records_dir = run / "records"
    if not records_dir.is_dir():
        raise DarhtError(f"{run}: no records/ directory (run `darht run` or put evaluation records there)")
    out = run / "report"
    records = tables.load_records(records_dir)  # every record is read (and checked) before any write
    transfer_path = records_dir / "transfer.json"
    transfer = read_json(transfer_path, "transfer record") if transfer_path.is_file() else None
    if transfer is not None and not (isinstance(transfer, dict) and transfer.get("kind") == "transfer"):
        raise DarhtError(f"{transfer_path}: not a darht transfer record")
    study_path = run / "study.json"  # a pipeline's claims and convergence criterion, if it declared them
    study = read_json(study_path, "study settings") if study_path.is_file() else {}
    claim_rows = claims_table(study["claims"], records, transfer) if study.get("claims") else []
    out.mkdir(parents=True, exist_ok=True)
    table = tables.rows(records)
    md = [f"# darht report: {run.name}", ""]
    if claim_rows:
        md += ["## Claims", "", "Each paper claim tested on this run's records (W-Robust = (clean + robust) / 2; "
               "`darht.report.claims` says how each test and verdict is made).", "", claims_markdown(claim_rows), ""]
        atomic_write_json(out / "claims.json", claim_rows)
    if table:
        first = next(iter(records.values()))
        md += [f"Test split of `{first['data']['name']}`, eps = {first['eps']:.4f} "
               f"({first['eps'] * 255:.1f}/255), {first['n']} examples x {first.get('trials_count', 1)} trial(s). "
               "W-Robust = (clean + robust) / 2; `worst` = the per-example minimum over the attacks. "
               "Randomized models (DARHT students in MC mode) are judged by the expected accuracy of one "
               "prediction (the fraction of fresh draws correct at each attack's strongest point; `strict` = "
               "correct in every draw), attacked with EOT; their deterministic face (dropout off) is listed "
               "next to them.", "", tables.markdown(table), ""]
        atomic_write_text(out / "results.csv", tables.to_csv(table))
        group_rows = tables.groups(records)
        if any(g["seeds"] > 1 for g in group_rows):
            md += ["## By model, over training seeds", "", "Robust accuracy (%) per attack: the mean over a "
                   "model's training seeds (NAME-s<k>) of each record's mean over trials; `@deterministic` is a "
                   "DARHT student with dropout off. W-Robust under the worst case, ± its sd across seeds.", "",
                   tables.groups_markdown(group_rows), ""]
            atomic_write_json(out / "groups.json", group_rows)
        sweeps = [(n, r) for n, r in records.items() if r.get("eot_sweep")]
        for n, r in sweeps:
            md += [f"EOT sweep for `{n}` (robust accuracy on the same examples, {r['draws']} draws each):", "",
                   tables.sweep_markdown(r["eot_sweep"]), ""]
        unswept = [n for n, r in records.items() if r.get("randomized") and not r.get("eot_sweep")]
        if unswept:
            md += [f"No EOT sweep for the randomized model(s) {', '.join(unswept)}: set `evaluation.eot_sweep` "
                   "to show that robust accuracy stopped falling.", ""]
        checks = [(n, c) for n, r in records.items() for c in r.get("checks", [])]
        if checks:
            md += ["Sanity checks:", ""] + [f"- {n}: {c}" for n, c in checks] + [""]
    if transfer:
        md += ["## Transferability", "", tables.transfer_markdown(transfer), ""]
        if transfer.get("teacher_matrix") and plots.transfer_heatmap(transfer["teacher_matrix"], out / "transfer.png"):
            md += ["![transferability](transfer.png)", ""]
    runs = {f"{kind}-{d.name}": read_metrics(d) for kind in ("students", "teachers")
            for d in sorted((run / kind).glob("*")) if d.is_dir()}
    student_runs = {k: v for k, v in runs.items() if k.startswith("students-")}
    if plots.epoch_curves(student_runs, out / "epochs.png"):
        md += ["## Per-epoch validation (held-out split of train)", "", "![per-epoch](epochs.png)", ""]
    if plots.w_robust_distributions(records, out / "w_robust_trials.png"):
        md += ["## W-Robust over trials", "", "![W-Robust distributions](w_robust_trials.png)", ""]
    conv = study.get("convergence")
    run_rows = _run_rows(run, runs, conv)
    if run_rows:
        head = "| run | method | architecture | best epoch | val clean (%) | val PGD (%) | train time (s) |"
        rule = "|---|---|---|---|---|---|---|"
        md += ["## Trained models", "", "Best epoch chosen on the held-out validation split (clean and PGD "
               "accuracy there, never the test set)."]
        if conv:
            unflat = [r.split(" | ")[0].lstrip("| ") for r in run_rows if r.endswith("| no |")]
            md += [f"Convergence: a curve is flat when its validation PGD accuracy over the last {conv['last']} "
                   f"epochs spans less than {100 * conv['max_spread']:.1f} points; "
                   + (f"**not flat: {', '.join(unflat)}**." if unflat else "every run is flat.")]
            head += f" last-{conv['last']} spread (pp) | flat |"
            rule += "---|---|"
        md += ["", head, rule] + run_rows + [""]
    atomic_write_text(out / "report.md", "\n".join(md))
    return out / "report.md"


def _fmt_pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def spread(metrics: list[dict], last: int, key: str = "val_robust") -> float | None:
    """max - min of `key` over the last `last` validated epochs (None: fewer epochs than that)."""
    values = [m[key] for m in metrics if m.get(key) is not None][-last:]
    return max(values) - min(values) if len(values) == last else None


def _run_rows(run: Path, runs: dict[str, list[dict]], conv: dict | None = None) -> list[str]:
    out = []
    for key, metrics in runs.items():
        kind, name = key.split("-", 1)
        best = run / kind / name / "best.json"
        if not best.is_file():
            continue
        info = read_json(best, "checkpoint sidecar")
        meta, spec = info.get("meta", {}), info.get("spec", {})
        arch = spec.get("name", "?")
        if arch == "darht-student":
            arch = f"darht-student({spec.get('kwargs', {}).get('backbone', '?')})"
        kw = {k: v for k, v in spec.get("kwargs", {}).items() if k in ("width", "depth", "embed_dim", "patch_size")}
        if kw:
            arch += " " + ",".join(f"{k}={v}" for k, v in kw.items())
        seconds = round(sum(m.get("time", 0) for m in metrics), 1)
        row = (f"| {kind[:-1]} {name} | {meta.get('method', '?')} | {arch} | {meta.get('epoch', '?')} | "
               f"{_fmt_pct(meta.get('val_clean'))} | {_fmt_pct(meta.get('val_robust'))} | {seconds} |")
        if conv:
            sp = spread(metrics, conv["last"])
            row += f" {_fmt_pct(sp)} | {'n/a' if sp is None else ('yes' if sp < conv['max_spread'] else 'no')} |"
        out.append(row)
    return out
