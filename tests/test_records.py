"""Evaluation and transfer records are built in one place (darht.evaluation.records): the CLI
verbs and the pipeline stages write the same fields, provenance included."""

from __future__ import annotations

import json

import pytest
import torch

import darht
from darht.cli import main
from darht.config import make_config
from darht.evaluation.comparable import check_comparable, read_record
from darht.evaluation.records import evaluation_record, transfer_record
from darht.evaluation.spec import EvalSpec
from darht.models import create_model
from darht.models.io import save_model
from darht.pipeline import Pipeline, PipelineConfig
from darht.report.build import write_report

KW = {"n": 48, "num_classes": 4, "shape": [1, 12, 12], "seed": 5}
DATA = ["--data", "synthetic", "--data-arg", "n=48", "--data-arg", "num_classes=4",
        "--data-arg", "shape=[1, 12, 12]", "--data-arg", "seed=5", "--device", "cpu"]
PROVENANCE = {"kind", "data", "git", "version", "command", "stage", "seed", "wall_time_s"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two saved teachers and a saved student (no training), and a pipeline over them whose
    evaluation and transfer stages have run."""
    tmp = tmp_path_factory.mktemp("records")
    torch.manual_seed(0)
    paths = {}
    for name in ("t1", "t2"):
        paths[name] = save_model(create_model("small-cnn", 4, in_chans=1, img_size=12), tmp / name,
                                 meta={"method": "standard", "epoch": 1})
    out = tmp / "run"
    save_model(create_model("small-cnn", 4, in_chans=1, img_size=12), out / "students" / "s" / "best",
               meta={"method": "rslad", "epoch": 2})
    cfg = make_config({
        "name": "rec", "out": str(out), "device": "cpu", "progress": False,
        "data": {"name": "synthetic", "kwargs": KW},
        "teachers": {n: {"checkpoint": str(p)} for n, p in paths.items()},
        "students": {"s": {"model": {"name": "small-cnn"}, "method": "rslad", "teachers": ["t1", "t2"]}},
        "evaluation": {"attacks": ["fgsm"], "eps": 0.03, "n": 16, "batch_size": 16},
        "transfer": {"attack": "fgsm", "eps": 0.03, "n": 16},
    }, cls=PipelineConfig)
    pipe = Pipeline(cfg, log=lambda *a: None)
    pipe.run_evaluation()
    pipe.run_transfer()
    return tmp, out, paths


def _check_provenance(rec: dict, stage: str | None) -> None:
    assert PROVENANCE <= set(rec)
    assert rec["version"] == darht.__version__
    assert isinstance(rec["command"], str) and rec["command"]
    assert rec["git"] is None or isinstance(rec["git"], str)
    assert rec["stage"] == stage
    assert rec["seed"] == 0 and rec["wall_time_s"] >= 0
    assert rec["data"] == {"name": "synthetic", "split": "test", "size": 48}


def test_cli_and_pipeline_evaluation_records_match(setup, tmp_path, capsys):
    _, out, _ = setup
    student = out / "students" / "s"
    path = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(student), *DATA, "--attacks", "fgsm", "--eps", "0.03",
                 "--n", "16", "--batch-size", "16", "--no-progress", "--out", str(path)]) == 0
    assert "| fgsm |" in capsys.readouterr().out
    cli = json.loads(path.read_text())
    pipe = json.loads((out / "records" / "student-s.json").read_text())
    assert set(cli) == set(pipe)
    _check_provenance(cli, None)
    _check_provenance(pipe, "evaluation")
    for rec in (cli, pipe):
        assert rec["kind"] == "evaluation" and rec["batch_size"] == 16
        assert rec["model"]["checkpoint"] == str(student)
        assert rec["model"]["spec"]["name"] == "small-cnn" and rec["model"]["method"] == "rslad"
        assert rec["attacks"] == ["fgsm"] and rec["eps"] == pytest.approx(0.03)
    assert cli["model"] == pipe["model"]
    assert cli["examples"] == pipe["examples"] and cli["summary"] == pipe["summary"]
    check_comparable(read_record(path), read_record(out / "records" / "student-s.json"), "cli", "pipeline")


def test_cli_and_pipeline_transfer_records_match(setup, tmp_path, capsys):
    _, out, paths = setup
    student = str(out / "students" / "s")
    path = tmp_path / "t.json"
    assert main(["transfer", *DATA, "--student", student, "--teacher", str(paths["t1"]), "--teacher",
                 str(paths["t2"]), "--attack", "fgsm", "--eps", "0.03", "--n", "16", "--out", str(path)]) == 0
    assert "transfer rate" in capsys.readouterr().out
    cli = json.loads(path.read_text())
    pipe = json.loads((out / "records" / "transfer.json").read_text())
    assert set(cli) == set(pipe)
    _check_provenance(cli, None)
    _check_provenance(pipe, "transfer")
    for rec in (cli, pipe):
        assert rec["kind"] == "transfer" and rec["attack"] == "fgsm" and rec["n"] == 16
        assert {"attack_args", "draws", "students", "teacher_matrix"} <= set(rec)
        assert set(rec["models"]) == {"students", "teachers"} and len(rec["models"]["teachers"]) == 2
        assert rec["models"]["students"][next(iter(rec["students"]))]["checkpoint"] == student
    assert cli["models"]["teachers"][str(paths["t1"])]["checkpoint"] == str(paths["t1"])
    assert pipe["models"]["teachers"]["t1"]["checkpoint"] == str(paths["t1"])
    a, b = cli["students"][student], pipe["students"]["s"]
    assert a["mean_transfer_rate"] == b["mean_transfer_rate"] and a["index"] == b["index"]

    assert main(["transfer", *DATA, "--select", "1", str(paths["t1"]), str(paths["t2"]), "--attack", "fgsm",
                 "--eps", "0.03", "--n", "16", "--out", str(path)]) == 0
    sel = json.loads(path.read_text())
    _check_provenance(sel, None)
    assert set(sel) == set(pipe) - {"students"} | {"selection"}
    assert sel["models"]["students"] == {}


def test_report_reads_the_records(setup):
    _, out, _ = setup
    md = write_report(out).read_text()
    assert "| fgsm | student-s |" in md and "Transferability" in md


def test_builders_refuse_incomplete_input():
    with pytest.raises(ValueError, match="evaluate"):
        evaluation_record({"summary": {}}, spec=EvalSpec(), model={}, data={})
    with pytest.raises(ValueError, match="draws"):
        transfer_record({}, settings={"attack": "pgd", "eps": 0.1, "n": 1, "attack_args": None, "seed": 0},
                        models={}, data={}, wall_time_s=0.0)
