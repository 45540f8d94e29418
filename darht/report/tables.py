"""Tables (Markdown and CSV) made only from stored evaluation records."""

from __future__ import annotations

import csv
import io
import re
import statistics
from pathlib import Path

from darht.errors import DarhtError
from darht.utils import read_json


def load_records(directory: str | Path) -> dict[str, dict]:
    """name -> evaluation record for every `*.json` evaluation record in `directory`.

    A file that cannot be read as a record gives one line naming it (a directory named *.json,
    non-UTF-8 bytes, invalid JSON, an evaluation record without the fields tables need).
    """
    d = Path(directory)
    if not d.is_dir():
        raise DarhtError(f"no records directory: {d}")
    out = {}
    for p in sorted(d.glob("*.json")):
        rec = read_json(p, "record")
        if isinstance(rec, dict) and rec.get("kind") == "evaluation":
            s = rec.get("summary")
            if not (isinstance(s, dict) and isinstance(s.get("robust"), dict) and isinstance(s.get("clean"), dict)
                    and isinstance(s.get("w_robust"), dict) and isinstance(rec.get("data"), dict)
                    and "eps" in rec):
                raise DarhtError(f"{p}: an evaluation record without summary/data/eps; re-run darht evaluate")
            out[p.stem] = rec
    return out


def rows(records: dict[str, dict]) -> list[dict]:
    """One row per (attack, model): clean, robust, W-Robust as fractions (mean, std over trials)."""
    out = []
    attacks: list[str] = []
    for rec in records.values():
        for a in rec["summary"]["robust"]:
            if a not in attacks:
                attacks.append(a)
    for attack in attacks:
        for name, rec in records.items():
            faces = [("", rec)]
            det = (rec.get("faces") or {}).get("deterministic")
            if det:  # a DARHT student: as deployed (MC) and with dropout off, side by side
                faces = [("mc", rec), ("deterministic", {**rec, **det})]
            for face, r in faces:
                s = r["summary"]
                if attack not in s["robust"]:
                    continue
                strict = s.get("strict", {}).get(attack, {}).get("mean") if r.get("randomized") else None
                out.append({"attack": attack, "model": name, "face": face, "clean": s["clean"]["mean"],
                            "robust": s["robust"][attack]["mean"], "w_robust": s["w_robust"][attack]["mean"],
                            "w_robust_std": s["w_robust"][attack]["std"], "trials": r.get("trials_count", 1),
                            "n": r.get("n"), "strict": strict})
    return out


def seed_group(name: str) -> str:
    """The run a training seed belongs to: 'students-darht-s1' -> 'students-darht'."""
    return re.sub(r"-s\d+$", "", name)


def groups(records: dict[str, dict]) -> list[dict]:
    """One row per model group: the records of one configuration's training seeds (NAME-s<k>)
    together, and a DARHT student's deterministic face (dropout off) as its own group
    `NAME@deterministic`. Per attack: the mean over seeds of each record's mean over trials;
    W-Robust also with the standard deviation across seeds (the spread that training varies)."""
    out: dict[str, dict] = {}
    for name, rec in records.items():
        faces = [("", rec)]
        det = (rec.get("faces") or {}).get("deterministic")
        if det:
            faces.append(("@deterministic", {**rec, **det}))
        for face, r in faces:
            g = out.setdefault(seed_group(name) + face, {"records": [], "summaries": []})
            g["records"].append(name)
            g["summaries"].append(r["summary"])
    rows = []
    for group, g in out.items():
        attacks = [a for a in g["summaries"][0]["robust"] if all(a in s["robust"] for s in g["summaries"])]
        w = [s["w_robust"]["worst"]["mean"] for s in g["summaries"] if "worst" in s["w_robust"]]
        rows.append({"group": group, "seeds": len(g["records"]), "records": g["records"],
                     "clean": statistics.fmean(s["clean"]["mean"] for s in g["summaries"]),
                     "robust": {a: statistics.fmean(s["robust"][a]["mean"] for s in g["summaries"]) for a in attacks},
                     "w_robust_worst": statistics.fmean(w) if len(w) == len(g["summaries"]) else None,
                     "w_robust_worst_sd": statistics.stdev(w) if len(w) == len(g["summaries"]) and len(w) > 1 else None})
    return rows


def groups_markdown(rows: list[dict]) -> str:
    """The groups as the README shows them: accuracy (%) per attack, mean over training seeds."""
    attacks = [a for a in (rows[0]["robust"] if rows else {}) if all(a in r["robust"] for r in rows)]
    lines = ["| model | seeds | clean | " + " | ".join(attacks) + " | W-Robust (worst) ± sd over seeds |",
             "|---|---|---|" + "---|" * len(attacks) + "---|"]
    for r in rows:
        w = "n/a" if r["w_robust_worst"] is None else f"{100 * r['w_robust_worst']:.2f}"
        if r["w_robust_worst_sd"] is not None:
            w += f" ± {100 * r['w_robust_worst_sd']:.2f}"
        lines.append(f"| {r['group']} | {r['seeds']} | {100 * r['clean']:.2f} | "
                     + " | ".join(f"{100 * r['robust'][a]:.2f}" for a in attacks) + f" | {w} |")
    return "\n".join(lines)


def markdown(table: list[dict]) -> str:
    """The paper's Table 3 layout: per attack, one row per model; the best W-Robust in bold."""
    lines = ["| attack | model | clean (%) | robust (%) | strict (%) | W-Robust (%) |", "|---|---|---|---|---|---|"]
    best: dict[str, float] = {}
    for r in table:
        best[r["attack"]] = max(best.get(r["attack"], -1.0), r["w_robust"])
    for r in table:
        w = f"{100 * r['w_robust']:.2f}"
        if r["trials"] > 1:
            w += f" ± {100 * r['w_robust_std']:.2f}"
        if r["w_robust"] == best[r["attack"]]:
            w = f"**{w}**"
        strict = "" if r.get("strict") is None else f"{100 * r['strict']:.2f}"
        model = f"{r['model']} ({r['face']})" if r.get("face") else r["model"]
        lines.append(f"| {r['attack']} | {model} | {100 * r['clean']:.2f} | {100 * r['robust']:.2f} | "
                     f"{strict} | {w} |")
    return "\n".join(lines)


def to_csv(table: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["attack", "model", "face", "clean", "robust", "strict", "w_robust", "w_robust_std", "trials", "n"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({k: r.get(k) for k in fields})
    return buf.getvalue()


def transfer_markdown(rec: dict) -> str:
    """Student -> teacher transfer rates and recoveries, and the teacher-to-teacher matrix.

    Counts on randomized models are expected values (floats); records made before the seeded
    sample and the student-wrong-clean exclusion are printed as before.
    """
    def num(v: int | float) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}"

    parts = []
    for student, res in rec.get("students", {}).items():
        wrong = res.get("student_wrong_clean")
        if wrong is None:
            parts.append(f"Student `{student}` ({res['examples']} examples all teachers classify correctly; "
                         f"{num(res['student_fooled'])} fool the student):\n")
        else:
            total = res["examples"] + wrong
            seeded = (f"seeded sample of {res['pool']}, seed {res.get('seed')}" if res.get("pool", total) > total
                      else "all of them")
            expected = " (expected counts: randomized model)" if isinstance(res["student_fooled"], float) else ""
            parts.append(f"Student `{student}` ({total} examples all teachers classify correctly "
                         f"({seeded}); {wrong} of them the student gets wrong clean, excluded from the rates; "
                         f"of the other {res['examples']}, {num(res['student_fooled'])} fool the student{expected}):\n")
        parts.append("| teacher | transfer rate (%) | student right where teacher wrong (%) |\n|---|---|---|")
        for t, v in res["teachers"].items():
            parts.append(f"| {t} | {pct(v['transfer_rate'])} | {pct(v['student_recovery'])} |")
        alle = res.get("all_examples")
        if alle and wrong:
            parts.append(f"\nOver all {alle['examples']} examples (student-wrong-clean included; "
                         f"{num(alle['student_fooled'])} fool the student): mean transfer rate (%) "
                         f"{pct(alle['mean_transfer_rate'])}; per teacher, transfer / recovery (%): "
                         + ", ".join(f"{t} {pct(v['transfer_rate'])} / {pct(v['student_recovery'])}"
                                     for t, v in alle["teachers"].items()))
        parts.append("")
    m = rec.get("teacher_matrix")
    if m:
        names = m["models"]
        sample = (f", seeded sample of {m['pool']}, seed {m.get('seed')}" if m.get("pool", m["examples"]) > m["examples"]
                  else "")
        parts.append(f"Teacher-to-teacher transfer (row: crafted on; column: evaluated on; {m['examples']} examples "
                     f"all of them classify correctly{sample}):\n")
        parts.append("| source \\ target | " + " | ".join(names) + " |")
        parts.append("|---|" + "---|" * len(names))
        for s in names:
            cells = ["n/a" if m["matrix"][s][t] is None else f"{100 * m['matrix'][s][t]:.1f}" for t in names]
            parts.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(parts)


def markdown_table(record: dict) -> str:
    """The paper's layout: one row per attack with clean, robust and W-Robust accuracy (%);
    a randomized model adds the strict verdict, a DARHT student its deterministic face."""
    s = record["summary"]
    pm = record.get("trials_count", 1) > 1
    rand = record.get("randomized", False)
    det = (record.get("faces") or {}).get("deterministic")

    def fmt(st: dict | None) -> str:
        if st is None:
            return ""
        return f"{100 * st['mean']:.2f}" + (f" ± {100 * st['std']:.2f}" if pm else "")

    head = ["attack", "clean (%)", "robust (%)", "W-Robust (%)"]
    if rand:
        head.insert(3, "strict (%)")
    if det:
        head = [head[0]] + [f"MC {h}" for h in head[1:]] + ["det. clean (%)", "det. robust (%)", "det. W-Robust (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in s["robust"]:
        cells = [k, fmt(s["clean"]), fmt(s["robust"][k])]
        if rand:
            cells.append(fmt(s.get("strict", {}).get(k)))
        cells.append(fmt(s["w_robust"][k]))
        if det:
            d = det["summary"]
            cells += [fmt(d["clean"]), fmt(d["robust"].get(k)), fmt(d["w_robust"].get(k))]
        lines.append("| " + " | ".join(cells) + " |")
    if not s["robust"]:
        lines.append(f"| (none) | {fmt(s['clean'])} |" + " |" * (len(head) - 2))
    return "\n".join(lines)


def sweep_markdown(sweep: dict) -> str:
    settings = sweep["settings"]
    lines = ["| attack | " + " | ".join(f"EOT {e} (%)" for e in settings) + " | stopped falling |",
             "|---|" + "---|" * (len(settings) + 1)]
    for name, e in sweep["attacks"].items():
        verdict = "n/a" if "converged" not in e else ("yes" if e["converged"] else
                                                      f"no (still -{100 * e['drop']:.2f} pp)")
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in e["robust"]) + f" | {verdict} |")
    return "\n".join(lines)
