"""Model cards: `darht export RUN_DIR --out DIR` and `darht evaluate --card DIR`, through the CLI.

A plain CNN run directory made by `darht train` (1 epoch on a tiny synthetic set) and a
darht-student run directory with random weights, written the way the trainer writes one
(config.yaml, best/last safetensors + json). Cheap attacks (FGSM) on 8 examples.
"""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from darht.cli import main
from darht.config import dump_yaml, make_config
from darht.evaluation.card import CONFIDENCE, tolerance
from darht.evaluation.card_check import read_card
from darht.models import create_model
from darht.models.io import load_model, read_meta, save_model
from darht.models.teachers import load_teacher

KW = {"n": 48, "num_classes": 4, "shape": [1, 12, 12], "seed": 2}
DATA_ARGS = [a for k, v in KW.items() for a in ("--data-arg", f"{k}={json.dumps(v)}")]
CHEAP = ["--n", "8", "--attacks", "fgsm", "--eps", "0.05", "--batch-size", "8", "--device", "cpu", "--no-progress"]


def _error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("evaluating ")]
    assert len(err) == 1, err
    assert err[0].startswith("darht: error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    # a real run directory: the trainer, one epoch (two steps)
    assert main(["train", "--data", "synthetic", "--set", f"data.kwargs={json.dumps(KW)}",
                 "--set", "data.augment=false", "--set", "eval.n=8", "--set", "eval.steps=1",
                 "--model", "small-cnn", "--set", "model.kwargs={width: 4}", "--method", "standard", "--epochs", "1", "--batch-size", "32", "--no-progress", "--device", "cpu",
                 "--out", str(d / "cnn")]) == 0
    # a darht-student with random weights, saved as the trainer saves a distilled one
    student_dir = d / "student"
    cfg = make_config({"data": {"name": "synthetic", "kwargs": KW, "augment": False}, "method": "darht",
                       "model": {"name": "small-cnn", "kwargs": {"width": 4}}, "epochs": 1, "device": "cpu",
                       "out": str(student_dir), "method_args": {"mc_samples": 2}})
    student_dir.mkdir()
    dump_yaml(cfg, student_dir / "config.yaml")
    torch.manual_seed(0)
    student = create_model("darht-student", num_classes=4, in_chans=1, img_size=12, backbone="small-cnn",
                           backbone_kwargs={"width": 4}, num_teachers=2, dropout=0.3, mc_samples=2)
    meta = {"method": "darht", "epoch": 1, "data": "synthetic", "val_clean": 0.25, "val_robust": 0.0}
    save_model(student, student_dir / "best", meta=meta)
    save_model(student, student_dir / "last", meta=meta)
    return d / "cnn", student_dir


@pytest.fixture(scope="module")
def cnn_card(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("cards") / "cnn"
    assert main(["export", str(runs[0]), "--out", str(out), *CHEAP]) == 0
    return out


def _numbers(card: dict) -> dict[str, dict]:
    return {num["name"]: num for num in card["numbers"]}


def test_card_fields_and_round_trip(runs, cnn_card, tmp_path, capsys):
    path, card = read_card(cnn_card)
    assert path == cnn_card / "card.json" and card["card_version"] == 1
    assert card["model"]["name"] == "small-cnn" and card["model"]["params"] > 0 and card["model"]["mc_mode"] is None
    data = card["data"]
    assert (data["name"], data["split"], data["size"], data["shape"], data["num_classes"]) == \
        ("synthetic", "test", 48, [1, 12, 12], 4)
    assert data["classes"] == [f"class{i}" for i in range(4)] and data["kwargs"] == KW
    assert card["threat_model"] == {"norm": "Linf", "eps": 0.05, "eps_text": "0.05", "eps_255": 0.05 * 255}
    assert card["training"]["config"]["method"] == "standard"
    assert card["training"]["checkpoint"].endswith("best.safetensors")
    assert card["software"]["torch"] and card["software"]["darht"] and card["software"]["python"]
    assert set(card["checks"]) == {"deterministic"}
    ev = card["evaluations"]["deterministic"]
    assert ev["n"] == 8 and ev["seed"] == 0 and len(ev["examples"]["index"]) == 8 and "randperm" in ev["selection"]
    nums = _numbers(card)
    assert set(nums) == {"deterministic.clean", "deterministic.robust.fgsm"}
    for num in nums.values():
        assert num["n"] == 8 and num["seed"] == 0 and num["tolerance"] == 0.0
        assert num["command"] == ev["command"] and num["command"].startswith("darht evaluate --checkpoint ")
    # the exported model reads like any checkpoint, and as a teacher
    assert read_meta(cnn_card)["meta"]["exported_from"].endswith("best.safetensors")
    assert load_teacher(str(cnn_card), num_classes=4, in_chans=1, img_size=12) is not None

    # the card's command, run as shown, and a direct `darht evaluate` of the run: the same numbers
    capsys.readouterr()
    for i, ckpt in enumerate([None, str(runs[0])]):
        argv = shlex.split(ev["command"])[1:] + ["--no-progress", "--out", str(tmp_path / f"r{i}.json")]
        if ckpt:
            argv[argv.index("--checkpoint") + 1] = ckpt
        assert main(argv) == 0
        rec = json.loads((tmp_path / f"r{i}.json").read_text())
        assert rec["examples"]["index"] == ev["examples"]["index"]
        assert rec["summary"]["clean"]["mean"] == nums["deterministic.clean"]["value"]
        assert rec["summary"]["robust"]["fgsm"]["mean"] == nums["deterministic.robust.fgsm"]["value"]

    capsys.readouterr()
    assert main(["evaluate", "--card", str(cnn_card / "card.json"), "--no-progress",
                 "--out", str(tmp_path / "verify.json")]) == 0
    out = capsys.readouterr().out
    assert "all 2 numbers reproduce" in out and "deterministic.robust.fgsm" in out
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["reproduced"] and all(r["exact"] for r in report["numbers"])


def test_a_tampered_number_does_not_reproduce(cnn_card, tmp_path, capsys):
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in cnn_card.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    card = json.loads((tampered / "card.json").read_text())
    num = _numbers(card)["deterministic.robust.fgsm"]
    num["value"] = num["value"] + 0.125 if num["value"] <= 0.5 else num["value"] - 0.125
    (tampered / "card.json").write_text(json.dumps(card))
    capsys.readouterr()
    assert main(["evaluate", "--card", str(tampered), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "does not reproduce: deterministic.robust.fgsm" in out
    assert "does not reproduce: deterministic.clean" not in out
    # a command whose settings were edited measures something else: named, exit 1
    card = json.loads((cnn_card / "card.json").read_text())
    argv = card["evaluations"]["deterministic"]["argv"]
    argv[argv.index("--seed") + 1] = "1"
    (tampered / "card.json").write_text(json.dumps(card))
    assert main(["evaluate", "--card", str(tampered), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "seed differs" in out and "examples (indices) differs" in out


def test_export_is_all_or_nothing(runs, tmp_path, monkeypatch, capsys):
    from darht.cli import export

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "run_evaluation", interrupted)
    assert main(["export", str(runs[0]), "--out", str(tmp_path / "card"), *CHEAP]) == 130
    assert list(tmp_path.iterdir()) == []  # neither the directory nor a temporary is left


def test_mc_student_export(runs, tmp_path, capsys):
    _, student_dir = runs
    out = tmp_path / "student-card"
    assert main(["export", str(student_dir), "--out", str(out), *CHEAP, "--eot", "2", "--draws", "4"]) == 0
    _, card = read_card(out)
    assert card["model"]["mc_mode"] == {"dropout": 0.3, "mc_samples": 2}
    assert card["model"]["kwargs"]["dropout"] == 0.0 and card["model"]["randomized"] is False
    # the exported weights are the deterministic face of the run's student
    exported = load_model(out)
    original = load_model(student_dir).set_deterministic(True)
    assert not exported.randomized
    x = torch.rand(5, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(exported(x), original(x))
    mc = card["evaluations"]["mc"]
    assert mc["randomized"] is True and mc["eot"] == 2 and mc["draws"] == 4 and "--mode mc" in mc["command"]
    assert card["evaluations"]["deterministic"]["randomized"] is False
    nums = _numbers(card)
    assert {"mc.clean", "mc.robust.fgsm", "mc.strict.fgsm", "deterministic.robust.fgsm"} <= set(nums)
    assert nums["mc.robust.fgsm"]["tolerance"] == pytest.approx(tolerance(nums["mc.robust.fgsm"]["value"], 8, True))
    assert nums["deterministic.clean"]["tolerance"] == 0.0
    # both faces equal a direct `darht evaluate` of the run's student in that mode
    base = ["evaluate", "--checkpoint", str(student_dir), "--data", "synthetic", *DATA_ARGS, *CHEAP]
    for mode, extra in (("mc", ["--eot", "2", "--draws", "4"]), ("deterministic", [])):
        rec_path = tmp_path / f"{mode}.json"
        assert main(base + ["--mode", mode, *extra, "--out", str(rec_path)]) == 0
        rec = json.loads(rec_path.read_text())
        assert rec["randomized"] is (mode == "mc")
        assert rec["examples"]["index"] == card["evaluations"][mode]["examples"]["index"]
        assert rec["summary"]["clean"]["mean"] == nums[f"{mode}.clean"]["value"]
        assert rec["summary"]["robust"]["fgsm"]["mean"] == nums[f"{mode}.robust.fgsm"]["value"]
    capsys.readouterr()
    assert main(["evaluate", "--card", str(out), "--no-progress"]) == 0
    assert "numbers reproduce" in capsys.readouterr().out


def test_tolerance_is_a_binomial_bound():
    assert tolerance(0.7, 1000, False) == 0.0
    z = 3.2905  # two-sided 99.9%
    assert CONFIDENCE == 0.999
    assert tolerance(0.5, 1000, True) == pytest.approx(z * (2 * 0.25 / 1000) ** 0.5, rel=1e-3)
    assert tolerance(1.0, 8, True) > 0 and tolerance(0.0, 8, True) > 0  # never zero width at the ends
    assert tolerance(0.5, 100, True) > tolerance(0.5, 1000, True) > tolerance(0.5, 10000, True)


def test_overwrite_is_refused_unless_forced(runs, cnn_card, tmp_path, capsys):
    before = (cnn_card / "card.json").read_text()
    assert main(["export", str(runs[0]), "--out", str(cnn_card), *CHEAP]) == 2
    assert "--force" in _error_line(capsys)
    assert (cnn_card / "card.json").read_text() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    clean_only = ["--n", "8", "--attacks", "", "--device", "cpu", "--no-progress"]
    assert main(["export", str(runs[0]), "--out", str(empty), *clean_only]) == 0
    assert main(["export", str(runs[0]), "--out", str(empty), "--force", "--seed", "1", *clean_only]) == 0
    _, card = read_card(empty)
    assert set(_numbers(card)) == {"deterministic.clean"} and card["evaluations"]["deterministic"]["seed"] == 1
    assert sorted(p.name for p in empty.iterdir()) == ["card.json", "model.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_bad_input_gives_one_line_and_exit_2(runs, cnn_card, tmp_path, capsys):
    cnn, _ = runs
    no_ckpt = tmp_path / "no-ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.yaml").write_text((cnn / "config.yaml").read_text())
    (tmp_path / "plain").mkdir()
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "record.json").write_text(json.dumps({"kind": "evaluation"}))
    future = json.loads((cnn_card / "card.json").read_text()) | {"card_version": 99}
    (tmp_path / "future.json").write_text(json.dumps(future))
    out = str(tmp_path / "out")
    cases = {
        "run dir not found": (["export", str(tmp_path / "missing"), "--out", out], "not found"),
        "not a run dir": (["export", str(tmp_path / "plain"), "--out", out], "not a darht run directory"),
        "no checkpoint": (["export", str(no_ckpt), "--out", out], "no checkpoint"),
        "unknown attack": (["export", str(cnn), "--out", out, "--attacks", "nosuch"], "unknown attack"),
        "--out is a file": (["export", str(cnn), "--out", str(tmp_path / "a-file")], "existing file"),
        "card not found": (["evaluate", "--card", str(tmp_path / "missing")], "not found"),
        "not a card": (["evaluate", "--card", str(tmp_path / "record.json")], "not a darht model card"),
        "card version": (["evaluate", "--card", str(tmp_path / "future.json")], "card_version"),
        "settings with --card": (["evaluate", "--card", str(cnn_card), "--n", "5"], "--n"),
    }
    for name, (argv, words) in cases.items():
        assert main(argv) == 2, name
        assert words in _error_line(capsys), name
    assert not (tmp_path / "out").exists()
    for argv in (["export", str(cnn), "--out", out, "--n", "0"], ["export", str(cnn)],
                 ["export", str(cnn), "--out", out, "--eps", "2"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
