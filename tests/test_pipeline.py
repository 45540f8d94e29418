"""`darht run` on a tiny config: every stage runs, re-running skips them, tables match the records."""

from __future__ import annotations

import csv
import json
import re

import pytest
import yaml

from darht.cli import main

TINY = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "data": {"name": "synthetic", "val_fraction": 0.25, "augment": False,
             "kwargs": {"n": 192, "num_classes": 4, "shape": [1, 12, 12], "seed": 5}},
    "train": {"epochs": 2, "batch_size": 32, "optim": {"lr": 0.05},
              "eval": {"n": 16, "steps": 1, "eps": 0.03}},
    "teachers": {
        "cnn": {"model": {"name": "small-cnn"}, "method": "pgd-at", "method_args": {"steps": 1, "eps": 0.03}},
        "vit": {"model": {"name": "vit-tiny"}, "method": "standard"},
    },
    "students": {
        "darht": {"model": {"name": "small-cnn"}, "method": "darht", "teachers": ["cnn", "vit"],
                  "method_args": {"steps": 1, "eps": 0.03}},
        "rslad": {"model": {"name": "small-cnn"}, "method": "rslad", "teachers": ["cnn"],
                  "method_args": {"steps": 1, "eps": 0.03}},
    },
    "evaluation": {"attacks": ["fgsm", "pgd"], "eps": 0.03, "n": 24, "trials": 3, "batch_size": 32,
                   "attack_args": {"pgd": {"steps": 1}}},
    "transfer": {"attack": "fgsm", "eps": 0.03, "n": 24},
    "progress": False,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    cfg = dict(TINY, out=str(tmp / "run"))
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    return tmp / "run", path


def test_every_stage_wrote_its_outputs(run):
    out, _ = run
    for d in ("teachers/cnn", "teachers/vit", "students/darht", "students/rslad"):
        assert (out / d / "best.safetensors").is_file(), d
    for r in ("student-darht", "student-rslad", "transfer"):
        assert (out / "records" / f"{r}.json").is_file(), r
    assert (out / "report" / "report.md").is_file()
    assert (out / "report" / "results.csv").is_file()
    assert (out / "report" / "transfer.png").is_file()


def test_table_values_equal_the_json_records(run):
    out, _ = run
    md = (out / "report" / "report.md").read_text()
    rows = list(csv.DictReader((out / "report" / "results.csv").open()))
    assert rows
    for row in rows:
        rec = json.loads((out / "records" / f"{row['model']}.json").read_text())
        if row["face"] == "deterministic":  # a DARHT student's second face, in the same record
            rec = rec["faces"]["deterministic"]
        s = rec["summary"]
        trials = rec["trials"]
        clean = sum(t["clean"] for t in trials) / len(trials)
        robust = sum(t["robust"][row["attack"]] for t in trials) / len(trials)
        assert float(row["clean"]) == pytest.approx(clean)
        assert float(row["robust"]) == pytest.approx(robust)
        assert float(row["w_robust"]) == pytest.approx((clean + robust) / 2)
        assert float(row["w_robust"]) == pytest.approx(s["w_robust"][row["attack"]]["mean"])
        label = f"{row['model']} ({row['face']})" if row["face"] else row["model"]
        line = next(line for line in md.splitlines() if line.startswith(f"| {row['attack']} | {label} |"))
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        assert float(cells[2]) == pytest.approx(100 * clean, abs=0.005)
        assert float(cells[3]) == pytest.approx(100 * robust, abs=0.005)
        assert float(re.split(r"\s*±", cells[5])[0]) == pytest.approx(100 * (clean + robust) / 2, abs=0.005)


def test_rerun_skips_finished_stages(run, capsys):
    out, path = run
    before = {p: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    ckpt = (out / "students" / "darht" / "best.safetensors").stat().st_mtime_ns
    assert main(["run", str(path), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")} == before
    assert (out / "students" / "darht" / "best.safetensors").stat().st_mtime_ns == ckpt
    assert "skipped" in capsys.readouterr().out


def test_report_verb_rebuilds_from_records(run, capsys):
    out, _ = run
    assert main(["report", str(out)]) == 0
    assert "W-Robust" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(str(p) for p in __import__("pathlib").Path("configs").rglob("*.yaml")))
def test_shipped_configs_are_valid(path):
    """Every shipped config (demo, study, the paper's GPU settings) builds all of its stages."""
    from darht.config import DataConfig, load_yaml, make_config
    from darht.pipeline import Pipeline, load_pipeline

    raw = load_yaml(path)
    if "teachers" in raw and isinstance(raw["teachers"], dict):
        cfg = load_pipeline(path)
        Pipeline(cfg, log=lambda *_: None, data=cfg.data)  # no data loading: validates the stages only
    else:
        make_config(raw)


def test_pipeline_refuses_unknown_teacher_names(tmp_path):
    from darht.errors import DarhtError
    from darht.pipeline import Pipeline, load_pipeline

    cfg = dict(TINY, out=str(tmp_path / "r"))
    cfg["students"] = {"s": {"method": "rslad", "teachers": ["nope"]}}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    c = load_pipeline(p)
    with pytest.raises(DarhtError, match="unknown teacher 'nope'"):
        Pipeline(c, log=lambda *_: None, data=c.data)


def test_seeds_repeat_a_student_stage_per_training_seed(tmp_path):
    from darht.pipeline import Pipeline, expand_seeds, load_pipeline

    cfg = dict(TINY, out=str(tmp_path / "r"))
    cfg["students"] = {**TINY["students"], "rslad": {**TINY["students"]["rslad"], "seeds": [0, 2]}}
    p = tmp_path / "seeds.yaml"
    p.write_text(yaml.safe_dump(cfg))
    c = load_pipeline(p)
    pipe = Pipeline(c, log=lambda *_: None, data=c.data)
    assert list(pipe.cfg.students) == ["darht", "rslad-s0", "rslad-s2"]
    assert list(c.students) == ["darht", "rslad"]  # the loaded config itself is left as it was
    seeds = [pipe._train_cfg(pipe.cfg.students[n], tmp_path / n, ["t"]).seed for n in ("rslad-s0", "rslad-s2")]
    assert seeds == [0, 2]
    assert pipe._train_cfg(pipe.cfg.students["darht"], tmp_path / "d", ["t"]).seed == TINY["seed"]
    assert pipe.cfg.students["rslad-s2"]["teachers"] == ["cnn"] and "seeds" not in pipe.cfg.students["rslad-s2"]
    assert expand_seeds({"a": {"x": 1}}) == {"a": {"x": 1}}
    order = expand_seeds({"a": {"seeds": [0, 1]}, "b": {}, "c": {"seeds": [5, 6, 7]}})
    assert list(order) == ["a-s0", "b", "c-s5", "a-s1", "c-s6", "c-s7"]  # one run of each stage first


@pytest.mark.parametrize("students, words", [
    ({"a": {"seeds": [0, 0]}}, "students.a.seeds must be a non-empty list of distinct integers"),
    ({"a": {"seeds": []}}, "students.a.seeds must be a non-empty list"),
    ({"a": {"seeds": "0,1"}}, "students.a.seeds must be"),
    ({"a": {"seeds": [0, True]}}, "students.a.seeds must be"),
    ({"a": {"seeds": [1], "seed": 3}}, "give either seed or seeds"),
    ({"a": {"seeds": [1]}, "a-s1": {}}, "also given explicitly"),
])
def test_bad_seeds_are_one_line_errors(students, words):
    from darht.errors import DarhtError
    from darht.pipeline import expand_seeds

    with pytest.raises(DarhtError, match=re.escape(words)):
        expand_seeds(students)


def test_claims_and_convergence_are_checked_and_stored_for_the_report(tmp_path, monkeypatch):
    from darht.errors import DarhtError
    from darht.pipeline import Pipeline, load_pipeline

    claim = {"id": "c", "paper": "4.2", "claim": "darht > rslad", "a": "darht", "b": "rslad", "expect": "greater"}
    cfg = dict(TINY, out=str(tmp_path / "r"), claims=[claim], convergence={"last": 3, "max_spread": 0.02})
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    c = load_pipeline(p)
    pipe = Pipeline(c, log=lambda *_: None, data=c.data)
    for stage in ("run_teachers", "run_students", "run_evaluation", "run_transfer"):
        monkeypatch.setattr(pipe, stage, lambda: None)
    monkeypatch.setattr("darht.pipeline.write_report", lambda out: out)
    pipe.run()
    stored = json.loads((tmp_path / "r" / "study.json").read_text())
    assert stored == {"claims": [{"attack": "worst", **claim}], "convergence": {"last": 3, "max_spread": 0.02}}
    for key, value, words in (("claims", [{**claim, "expect": "up"}], "claims[0].expect"),
                              ("convergence", {"last": 1, "max_spread": 0.1}, "convergence.last")):
        p.write_text(yaml.safe_dump({**cfg, key: value}))
        c = load_pipeline(p)
        with pytest.raises(DarhtError, match=re.escape(words)):
            Pipeline(c, log=lambda *_: None, data=c.data)
