"""`darht report RUN_DIR`: Markdown + CSV tables and PNG plots from a run directory's records."""

from __future__ import annotations

import json
from pathlib import Path

from darht.errors import DarhtError
from darht.report import plots, tables
from darht.utils import atomic_write_text


def write_report(run_dir: str | Path) -> Path:
    run = Path(run_dir)
    records_dir = run / "records"
    if not records_dir.is_dir():
        raise DarhtError(f"{run}: no records/ directory (run `darht run` or put evaluation records there)")
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    records = tables.load_records(records_dir)
    table = tables.rows(records)
    md = [f"# darht report: {run.name}", ""]
    if table:
        first = next(iter(records.values()))
        md += [f"Test split of `{first['data']['name']}`, eps = {first['eps']:.4f} "
               f"({first['eps'] * 255:.1f}/255), {first['n']} examples x {first.get('trials_count', 1)} trial(s). "
               "W-Robust = (clean + robust) / 2; `worst` = robust under every attack, per example.", "",
               tables.markdown(table), ""]
        atomic_write_text(out / "results.csv", tables.to_csv(table))
        checks = [(n, c) for n, r in records.items() for c in r.get("checks", [])]
        if checks:
            md += ["Sanity checks:", ""] + [f"- {n}: {c}" for n, c in checks] + [""]
    transfer_path = records_dir / "transfer.json"
    transfer = json.loads(transfer_path.read_text()) if transfer_path.is_file() else None
    if transfer:
        md += ["## Transferability", "", tables.transfer_markdown(transfer), ""]
        if transfer.get("teacher_matrix") and plots.transfer_heatmap(transfer["teacher_matrix"], out / "transfer.png"):
            md += ["![transferability](transfer.png)", ""]
    runs = {f"{kind}-{d.name}": plots.read_metrics(d) for kind in ("students", "teachers")
            for d in sorted((run / kind).glob("*")) if d.is_dir()}
    student_runs = {k: v for k, v in runs.items() if k.startswith("students-")}
    if plots.epoch_curves(student_runs, out / "epochs.png"):
        md += ["## Per-epoch validation (held-out split of train)", "", "![per-epoch](epochs.png)", ""]
    if plots.w_robust_distributions(records, out / "w_robust_trials.png"):
        md += ["## W-Robust over trials", "", "![W-Robust distributions](w_robust_trials.png)", ""]
    wall = {k: round(sum(m.get("time", 0) for m in v), 1) for k, v in runs.items() if v}
    if wall:
        md += ["## Training wall time (s)", "", "| run | seconds |", "|---|---|"]
        md += [f"| {k} | {v} |" for k, v in wall.items()] + [""]
    atomic_write_text(out / "report.md", "\n".join(md))
    return out / "report.md"
