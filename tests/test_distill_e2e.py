"""End to end through the CLI: two heterogeneous teachers (a CNN and a ViT) trained here for a few
steps, a DARHT student distilled from them, resumed bit-identically, then evaluated."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from darht.cli import main

DATA = ["--data", "synthetic", "--set", "data.kwargs={n: 128, num_classes: 4, shape: [1, 12, 12], seed: 2}",
        "--set", "data.augment=false", "--set", "eval.n=16", "--set", "eval.steps=1", "--batch-size", "32",
        "--no-progress", "--device", "cpu", "--set", "optim.schedule=constant", "--lr", "0.05"]
STUDENT_ARGS = ["--set", "method_args={steps: 1, eps: 0.03, mc_samples: 2}", "--set", "model.kwargs={width: 4}"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    d = tmp_path_factory.mktemp("teachers")
    assert main(["train", "--model", "small-cnn", "--method", "pgd-at", "--epochs", "1", "--out", str(d / "cnn"),
                 "--set", "method_args={steps: 1, eps: 0.03}", *DATA]) == 0
    assert main(["train", "--model", "vit-tiny", "--method", "standard", "--epochs", "1", "--out", str(d / "vit"),
                 "--set", "model.kwargs={depth: 1, embed_dim: 32, num_heads: 2}", *DATA]) == 0
    return d / "cnn", d / "vit"


def _distill(out, epochs, teachers, resume=False):
    argv = ["distill", "--student", "small-cnn", "--teacher", str(teachers[0]), "--teacher", str(teachers[1]),
            "--method", "darht", "--epochs", str(epochs), "--out", str(out), *STUDENT_ARGS, *DATA]
    return main(argv + (["--resume"] if resume else []))


def test_distill_resumes_bit_identically_and_is_evaluated(teachers, tmp_path, capsys, monkeypatch):
    from darht.engine import checkpoint as ckpt

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _distill(straight, 2, teachers) == 0
    real_save = ckpt.save_checkpoint

    def ctrl_c_after_epoch_1(path, state):  # the split run is stopped right after its first checkpoint
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_checkpoint", ctrl_c_after_epoch_1)
    assert _distill(split, 2, teachers) == 130
    monkeypatch.undo()
    assert _distill(split, 2, teachers, resume=True) == 0
    a, b = load_file(straight / "last.safetensors"), load_file(split / "last.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed student differs from the straight run"
    meta = json.loads((straight / "best.json").read_text())
    assert meta["spec"]["name"] == "darht-student" and meta["spec"]["kwargs"]["num_teachers"] == 2

    metrics = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    for m in metrics:  # the user sees which teacher the student leans on
        assert m["train_w_teacher0"] + m["train_w_teacher1"] == pytest.approx(1.0, abs=1e-5)
        assert m["train_kl_teacher0"] >= 0 and m["train_kl_teacher1"] >= 0

    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(straight), "--data", "synthetic",
                 "--data-arg", "n=128", "--data-arg", "num_classes=4", "--data-arg", "shape=[1, 12, 12]",
                 "--data-arg", "seed=2", "--attacks", "fgsm,pgd", "--eps", "0.03", "--eot", "2",
                 "--attack-arg", "pgd.steps=2", "--n", "32", "--no-progress", "--device", "cpu",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["randomized"] is True           # MC dropout student: attacks use EOT
    assert rec["attack_args"]["pgd"]["eot"] == 2
    assert 0.0 <= rec["summary"]["robust"]["worst"]["mean"] <= rec["summary"]["clean"]["mean"]
    assert "| pgd |" in capsys.readouterr().out


def test_distill_refuses_a_teacher_with_other_classes(teachers, tmp_path, capsys):
    bad = ["--set", "data.kwargs={n: 128, num_classes: 5, shape: [1, 12, 12], seed: 2}"]
    argv = ["distill", "--student", "small-cnn", "--teacher", str(teachers[0]), "--method", "rslad",
            "--epochs", "1", "--out", str(tmp_path / "s"), *DATA, *bad]
    assert main(argv) == 2
    assert "class" in capsys.readouterr().err


def test_transfer_verb_with_student_and_select(teachers, tmp_path, capsys):
    student = tmp_path / "student"
    assert _distill(student, 1, teachers) == 0
    data = ["--data", "synthetic", "--data-arg", "n=128", "--data-arg", "num_classes=4",
            "--data-arg", "shape=[1, 12, 12]", "--data-arg", "seed=2", "--eps", "0.1", "--n", "64", "--device", "cpu"]
    capsys.readouterr()
    out = tmp_path / "t.json"
    assert main(["transfer", *data, "--student", str(student), "--teacher", str(teachers[0]),
                 "--teacher", str(teachers[1]), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    res = rec["students"][str(student)]
    for t in res["teachers"].values():
        assert t["both_fooled"] <= min(res["student_fooled"], t["teacher_fooled"])
        if res["student_fooled"]:
            assert t["transfer_rate"] == pytest.approx(t["both_fooled"] / res["student_fooled"])
    assert set(rec["teacher_matrix"]["models"]) == {str(teachers[0]), str(teachers[1])}
    assert "transfer rate" in capsys.readouterr().out

    assert main(["transfer", *data, "--select", "1", str(teachers[0]), str(teachers[1]),
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert len(rec["selection"]["selected"]) == 1
    assert "proposed teacher set" in capsys.readouterr().out
    assert main(["transfer", *data, "--select", "3", str(teachers[0]), str(teachers[1])]) == 2
