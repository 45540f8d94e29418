"""The README's results section against the stored study (results/fmnist-study).

Every number in the README's claims table and model table must be what `darht report` computes
from the stored records, and `darht compare` on the same records must give the same test: so the
README can only change together with the records it quotes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from darht.cli import main
from darht.report.claims import claims_markdown, claims_table
from darht.report.tables import groups, groups_markdown, load_records
from darht.utils import read_json

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "fmnist-study"


def results_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Results")
    return text[start:text.index("\n## ", start + 1)]


def stored():
    records = load_records(STUDY / "records")
    study = read_json(STUDY / "study.json", "study settings")
    transfer = read_json(STUDY / "records" / "transfer.json", "transfer record")
    return records, study, transfer


def table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def test_the_claims_table_is_the_one_the_records_give():
    records, study, transfer = stored()
    rows = claims_table(study["claims"], records, transfer)
    section = results_section()
    lines = table_lines(claims_markdown(rows))
    assert len(lines) == 2 + len(study["claims"])  # header, rule, one row per claim
    for line in lines:
        assert line in section, f"README results section lacks (or has a stale) claims row:\n{line}"
    for r in rows:  # the row counted is the row shown: verdict and p as computed
        assert f"**{r['verdict']}**" in section


def test_the_model_table_is_the_one_the_records_give():
    records, _, _ = stored()
    for line in table_lines(groups_markdown(groups(records))):
        assert line in results_section(), f"README results section lacks (or has a stale) model row:\n{line}"


def test_the_stored_report_is_current():
    records, study, transfer = stored()
    stored_rows = read_json(STUDY / "report" / "claims.json", "claims")
    fresh = claims_table(study["claims"], records, transfer)
    assert [(r["id"], r["verdict"], r["effect"], r["p_value"]) for r in stored_rows] == \
        [(r["id"], r["verdict"], r["effect"], r["p_value"]) for r in fresh]


def test_the_study_config_declares_the_claims_tested():
    cfg = yaml.safe_load((ROOT / "configs" / "fmnist-study.yaml").read_text())
    _, study, _ = stored()
    assert [c["id"] for c in cfg["claims"]] == [c["id"] for c in study["claims"]]
    assert cfg["convergence"] == study["convergence"]
    assert cfg["name"] == read_json(STUDY / "run.json", "run status")["name"]


def test_darht_compare_on_the_records_gives_the_claims_welch_test(capsys):
    records, study, transfer = stored()
    row = next(r for r in claims_table(study["claims"], records, transfer) if r["test"] == "Welch across seeds")
    args = [f"{row['a']}={STUDY / 'records' / (k + '.json')}" for k in row["records_a"]]
    args += [f"{row['b']}={STUDY / 'records' / (k + '.json')}" for k in row["records_b"]]
    assert main(["compare", *args, "--attack", row["attack"]]) == 0
    out = capsys.readouterr().out
    welch = [line for line in out.splitlines() if line.startswith(f"| {row['a']} | {row['b']} | {row['attack']} |")]
    assert welch, out
    assert f"{row['p_value']:.3g}" in welch[0]
    assert f"{100 * row['effect']:+.2f} [{100 * row['ci'][0]:+.2f}, {100 * row['ci'][1]:+.2f}]" in welch[0]


@pytest.mark.parametrize("name", ["teachers", "students"])
def test_every_stored_run_has_its_resolved_config_and_curve(name):
    runs = sorted((STUDY / name).iterdir())
    assert runs
    for d in runs:
        assert (d / "config.yaml").is_file() and (d / "metrics.jsonl").is_file() and (d / "best.json").is_file(), d
        assert not list(d.glob("*.safetensors")) and not list(d.glob("*.pt")), f"{d}: weights are not stored"


def test_readme_names_the_commands_that_regenerate_it():
    section = results_section()
    assert "darht run configs/fmnist-study.yaml" in section
    assert re.search(r"darht report results/fmnist-study", section)
    assert "darht compare" in section
