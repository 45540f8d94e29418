"""Bad input, across every verb: exit code 2, exactly one `darht: error:` line, no traceback, and
nothing left behind that was not there before.

Each case runs `darht.cli.main` in a fresh working directory holding the fixture files (real
formats: safetensors checkpoints with JSON sidecars, YAML configs, JSON records, a malicious
pickle); the directory tree is compared before and after.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from darht.cli import main
from darht.models import create_model
from darht.models.io import save_model

SYN = ["--data", "synthetic", "--data-arg", "n=24", "--data-arg", "num_classes=4", "--data-arg", "shape=[1,12,12]"]
SYN3 = ["--data", "synthetic", "--data-arg", "n=24", "--data-arg", "num_classes=4", "--data-arg", "shape=[3,16,16]"]
SET_SYN = ["--data", "synthetic", "--set", "data.kwargs={n: 24, num_classes: 4, shape: [1, 12, 12]}",
           "--epochs", "1", "--no-progress"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _record(eps: float = 0.03) -> dict:
    ex = {"index": list(range(4)), "clean": [1, 1, 0, 1], "clean_strict": [1, 1, 0, 1],
          "robust": {"pgd": [1, 0, 0, 1], "worst": [1, 0, 0, 1]}, "strict": {"pgd": [1, 0, 0, 1], "worst": [1, 0, 0, 1]}}
    trial = {"clean": 0.75, "robust": {"pgd": 0.5, "worst": 0.5}, "w_robust": {"pgd": 0.625, "worst": 0.625}}
    stat = {"mean": 0.5, "std": 0.0}
    return {"kind": "evaluation", "data": {"name": "synthetic", "split": "test", "size": 4}, "eps": eps,
            "attacks": ["pgd"], "attack_args": {"pgd": {"steps": 10}}, "eot": 1, "draws": 1, "randomized": False,
            "trials": [trial, trial], "trial_positions": [[0, 1], [2, 3]], "trials_disjoint": True,
            "summary": {"clean": stat, "robust": {"pgd": stat, "worst": stat}, "w_robust": {"pgd": stat, "worst": stat}},
            "examples": ex}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fixtures")
    torch.manual_seed(0)
    save_model(create_model("small-cnn", num_classes=4, in_chans=1, img_size=12, width=4), d / "cnn")
    save_model(create_model("small-cnn", num_classes=3, in_chans=1, img_size=12, width=4), d / "cnn3")
    save_model(create_model("darht-student", num_classes=4, in_chans=1, img_size=12, backbone="small-cnn",
                            backbone_kwargs={"width": 4}, num_teachers=1), d / "student")
    (d / "garbage.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)
    with open(d / "evil.pt", "wb") as f:
        pickle.dump(_Evil(), f)
    (d / "empty.yaml").write_text("")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "broken.yaml").write_text("epochs: [1, 2\n")
    (d / "a.json").write_text(json.dumps(_record()))
    (d / "b.json").write_text(json.dumps(_record()))
    (d / "eps.json").write_text(json.dumps(_record(eps=0.05)))
    (d / "list.json").write_text("[1, 2, 3]")
    (d / "nofields.json").write_text(json.dumps({"kind": "evaluation"}))
    (d / "latin1.json").write_bytes("{\"k\": \"\xe9\"}".encode("latin-1"))
    (d / "a-file").write_text("x")
    (d / "recdir.json").mkdir()
    (d / "norecords").mkdir()
    bad = d / "badrun" / "records"
    bad.mkdir(parents=True)
    (bad / "x.json").write_text("{not json")
    latin = d / "latinrun" / "records"
    latin.mkdir(parents=True)
    (latin / "x.json").write_bytes(b"\xff\xfe\xfa")
    pipe = {"name": "p", "out": "runs/p", "data": {"name": "synthetic", "kwargs": {"n": 24, "num_classes": 4,
                                                                                     "shape": [1, 12, 12]}},
            "train": {"epochs": 1}, "teachers": {"t": {"model": {"name": "small-cnn"}, "method": "standard"}},
            "students": {"s": {"model": {"name": "small-cnn"}, "method": "rslad", "teachers": ["t"]}},
            "evaluation": {"attacks": ["fgsm"], "n": 8}}
    import yaml

    def variant(name, change):
        cfg = json.loads(json.dumps(pipe))
        change(cfg)
        (d / name).write_text(yaml.safe_dump(cfg))

    variant("pipe-good.yaml", lambda c: None)
    variant("pipe-unknown-key.yaml", lambda c: c.update(bogus=1))
    variant("pipe-unknown-teacher.yaml", lambda c: c["students"]["s"].update(teachers=["nope"]))
    variant("pipe-bad-attack.yaml", lambda c: c["evaluation"].update(attacks=["nosuch"]))
    variant("pipe-bad-transfer.yaml", lambda c: c.update(transfer={"attack": "nosuch"}))
    variant("pipe-transfer-key.yaml", lambda c: c.update(transfer={"atack": "pgd"}))
    variant("pipe-missing-ckpt.yaml", lambda c: c["teachers"].update(t={"checkpoint": "missing.safetensors"}))
    variant("pipe-bad-method.yaml", lambda c: c["students"]["s"].update(method="nosuch"))
    variant("pipe-bad-eps.yaml", lambda c: c["evaluation"].update(eps=3))
    variant("pipe-bad-split.yaml", lambda c: c["evaluation"].update(split="train"))
    variant("pipe-bad-lr.yaml", lambda c: c["train"].update(optim={"lr": "fast"}))
    return d


F = "{F}"  # placeholder for the fixtures directory
CASES = {
    # ---- train
    "train: unknown data set": ["train", "--data", "nosuch", "--no-progress"],
    "train: unknown method": ["train", *SET_SYN, "--method", "nosuch"],
    "train: unknown model": ["train", *SET_SYN, "--model", "nosuch"],
    "train: missing config": ["train", "--config", "missing.yaml"],
    "train: empty config": ["train", "--config", f"{F}/empty.yaml"],
    "train: config not a mapping": ["train", "--config", f"{F}/list.yaml"],
    "train: invalid YAML": ["train", "--config", f"{F}/broken.yaml"],
    "train: bool given a list": ["train", *SET_SYN, "--set", "data.augment=[1]"],
    "train: milestones not numbers": ["train", *SET_SYN, "--set", "optim.milestones=[a, b]"],
    "train: negative limit": ["train", *SET_SYN, "--set", "data.limit=-5"],
    "train: negative lr": ["train", *SET_SYN, "--set", "optim.lr=-1"],
    "train: negative eval.n": ["train", *SET_SYN, "--set", "eval.n=-1"],
    "train: unknown amp": ["train", *SET_SYN, "--set", "amp=fp8"],
    "train: unknown key": ["train", *SET_SYN, "--set", "bogus=1"],
    "train: eps above 1": ["train", *SET_SYN, "--method", "pgd-at", "--set", "method_args.eps=2"],
    "train: eval eps above 1": ["train", *SET_SYN, "--set", "eval.eps=1.5"],
    "train: cuda without CUDA": ["train", *SET_SYN, "--device", "cuda"],
    "train: misspelt device": ["train", *SET_SYN, "--device", "gpu0"],
    "train: --out is a file": ["train", *SET_SYN, "--out", f"{F}/a-file"],
    "train: --out below a file": ["train", *SET_SYN, "--out", f"{F}/a-file/run"],
    "train: unknown validation attack": ["train", *SET_SYN, "--set", "eval.attack=nosuch"],
    "train: method arg of the wrong type": ["train", *SET_SYN, "--method", "trades", "--set", "method_args.steps=abc"],
    "train: unknown method arg": ["train", *SET_SYN, "--method", "trades", "--set", "method_args.bogus=1"],
    "train: val_fraction out of range": ["train", *SET_SYN, "--set", "data.val_fraction=1.5"],
    "train: teachers given to a teacher method": ["train", *SET_SYN, "--method", "trades",
                                                  "--set", f"teachers=[{F}/cnn.safetensors]"],
    "train: --set without =": ["train", *SET_SYN, "--set", "optim.lr"],
    "train: weights that do not fit": ["train", *SET_SYN, "--set", f"model.weights={F}/cnn3.safetensors"],
    # ---- distill
    "distill: no teacher": ["distill", *SET_SYN, "--student", "small-cnn"],
    "distill: teacher not found": ["distill", *SET_SYN, "--teacher", "missing/run"],
    "distill: corrupt teacher": ["distill", *SET_SYN, "--teacher", f"{F}/garbage.safetensors"],
    "distill: malicious pickle teacher": ["distill", *SET_SYN, "--teacher", f"small-cnn={F}/evil.pt"],
    "distill: not a distillation method": ["distill", *SET_SYN, "--teacher", f"{F}/cnn.safetensors",
                                           "--method", "trades"],
    "distill: teacher with other classes": ["distill", *SET_SYN, "--teacher", f"{F}/cnn3.safetensors"],
    "distill: negative eps": ["distill", *SET_SYN, "--teacher", f"{F}/cnn.safetensors",
                              "--set", "method_args.eps=-0.1"],
    "distill: --out is a file": ["distill", *SET_SYN, "--teacher", f"{F}/cnn.safetensors", "--out", f"{F}/a-file"],
    # ---- evaluate
    "evaluate: no model": ["evaluate", *SYN, "--no-progress"],
    "evaluate: checkpoint not found": ["evaluate", *SYN, "--checkpoint", "missing.safetensors"],
    "evaluate: corrupt checkpoint": ["evaluate", *SYN, "--checkpoint", f"{F}/garbage.safetensors"],
    "evaluate: malicious pickle": ["evaluate", *SYN, "--model", "small-cnn", "--weights", f"{F}/evil.pt"],
    "evaluate: unknown attack": ["evaluate", *SYN, "--checkpoint", f"{F}/cnn.safetensors", "--attacks", "nosuch"],
    "evaluate: attack arg of the wrong type": ["evaluate", *SYN, "--checkpoint", f"{F}/cnn.safetensors",
                                               "--attacks", "pgd", "--attack-arg", "pgd.steps=abc"],
    "evaluate: unknown attack arg": ["evaluate", *SYN, "--checkpoint", f"{F}/cnn.safetensors",
                                     "--attacks", "pgd", "--attack-arg", "pgd.bogus=1"],
    "evaluate: attack arg for an unknown attack": ["evaluate", *SYN, "--checkpoint", f"{F}/cnn.safetensors",
                                                   "--attack-arg", "nosuch.steps=1"],
    "evaluate: attack arg without a key": ["evaluate", *SYN, "--checkpoint", f"{F}/cnn.safetensors",
                                           "--attack-arg", "pgd=3"],
    "evaluate: --out is a directory": ["evaluate", *SYN, "--checkpoint", f"{F}/cnn.safetensors", "--out", F],
    "evaluate: --out below a file": ["evaluate", *SYN, "--checkpoint", f"{F}/cnn.safetensors",
                                     "--out", f"{F}/a-file/r.json"],
    "evaluate: cuda without CUDA": ["evaluate", *SYN, "--checkpoint", f"{F}/cnn.safetensors", "--device", "cuda"],
    "evaluate: --mode on a plain model": ["evaluate", *SYN, "--checkpoint", f"{F}/cnn.safetensors", "--mode", "mc"],
    "evaluate: classes differ": ["evaluate", *SYN, "--checkpoint", f"{F}/cnn3.safetensors"],
    "evaluate: image shape differs": ["evaluate", *SYN3, "--checkpoint", f"{F}/cnn.safetensors"],
    "evaluate: unknown data set": ["evaluate", "--data", "nosuch", "--checkpoint", f"{F}/cnn.safetensors"],
    "evaluate: unknown data option": ["evaluate", *SYN, "--data-arg", "bogus=1", "--checkpoint", f"{F}/cnn.safetensors"],
    "evaluate: weights of another architecture": ["evaluate", *SYN, "--model", "small-cnn", "--weights",
                                                  f"{F}/cnn3.safetensors"],
    # ---- compare
    "compare: record not found": ["compare", f"{F}/a.json", "missing.json"],
    "compare: a directory": ["compare", f"{F}/a.json", f"{F}/recdir.json"],
    "compare: non-UTF-8 file": ["compare", f"{F}/a.json", f"{F}/latin1.json"],
    "compare: JSON of the wrong shape": ["compare", f"{F}/a.json", f"{F}/list.json"],
    "compare: record without fields": ["compare", f"{F}/a.json", f"{F}/nofields.json"],
    "compare: one record": ["compare", f"{F}/a.json"],
    "compare: different eps": ["compare", f"{F}/a.json", f"{F}/eps.json"],
    "compare: unknown attack": ["compare", f"{F}/a.json", f"{F}/b.json", "--attack", "nosuch"],
    "compare: --out is a directory": ["compare", f"{F}/a.json", f"{F}/b.json", "--out", F],
    # ---- transfer
    "transfer: no teacher": ["transfer", *SYN, "--student", f"{F}/student.safetensors"],
    "transfer: --select too many": ["transfer", *SYN, "--select", "3", f"{F}/cnn.safetensors", f"{F}/cnn.safetensors"],
    "transfer: unknown attack": ["transfer", *SYN, "--student", f"{F}/student.safetensors",
                                 "--teacher", f"{F}/cnn.safetensors", "--attack", "nosuch"],
    "transfer: student not found": ["transfer", *SYN, "--student", "missing", "--teacher", f"{F}/cnn.safetensors"],
    "transfer: --out below a file": ["transfer", *SYN, "--student", f"{F}/student.safetensors",
                                     "--teacher", f"{F}/cnn.safetensors", "--out", f"{F}/a-file/t.json"],
    "transfer: teacher of other classes": ["transfer", *SYN, "--student", f"{F}/student.safetensors",
                                           "--teacher", f"{F}/cnn3.safetensors"],
    "transfer: student of another shape": ["transfer", *SYN3, "--student", f"{F}/student.safetensors",
                                           "--teacher", "small-cnn"],
    # ---- report
    "report: run directory missing": ["report", "missing-run"],
    "report: no records": ["report", f"{F}/norecords"],
    "report: corrupt record": ["report", f"{F}/badrun"],
    "report: non-UTF-8 record": ["report", f"{F}/latinrun"],
    # ---- run
    "run: config missing": ["run", "missing.yaml"],
    "run: config empty": ["run", f"{F}/empty.yaml"],
    "run: unknown key": ["run", f"{F}/pipe-unknown-key.yaml"],
    "run: unknown teacher": ["run", f"{F}/pipe-unknown-teacher.yaml"],
    "run: unknown attack": ["run", f"{F}/pipe-bad-attack.yaml"],
    "run: unknown transfer attack": ["run", f"{F}/pipe-bad-transfer.yaml"],
    "run: unknown transfer key": ["run", f"{F}/pipe-transfer-key.yaml"],
    "run: teacher checkpoint missing": ["run", f"{F}/pipe-missing-ckpt.yaml"],
    "run: unknown student method": ["run", f"{F}/pipe-bad-method.yaml"],
    "run: eps above 1": ["run", f"{F}/pipe-bad-eps.yaml"],
    "run: evaluation on train": ["run", f"{F}/pipe-bad-split.yaml"],
    "run: lr not a number": ["run", f"{F}/pipe-bad-lr.yaml"],
    "run: --out below a file": ["run", f"{F}/pipe-good.yaml", "--set", f"out={F}/a-file/x"],
    "run: bad --set value": ["run", f"{F}/pipe-good.yaml", "--set", "evaluation.trials=0"],
    # ---- data
    "data info: unknown data set": ["data", "info", "nosuch"],
    "data download: unknown data set": ["data", "download", "nosuch", "--root", "dl"],
    "data download: --root below a file": ["data", "download", "cifar10", "--root", f"{F}/a-file/dl"],
    "data download: source unreachable": ["data", "download", "cifar10", "--root", "dl/data",
                                          "--url", "file:///nonexistent/cifar.tar.gz"],
    "data download: not an archive": ["data", "download", "cifar10", "--root", "dl",
                                      "--url", f"file://{F}/a.json"],
}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_line_exit_2_nothing_left_behind(name, files, tmp_path, monkeypatch, capsys):
    argv = [a.replace(F, str(files)) for a in CASES[name]]
    monkeypatch.chdir(tmp_path)
    before_here, before_fixtures = _tree(tmp_path), _tree(files)
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("darht: error:")]
    assert code == 2, (name, out.err[-800:])
    assert len(errors) == 1, (name, out.err[-800:])
    assert "Traceback" not in out.err and "Traceback" not in out.out
    assert _tree(tmp_path) == before_here, name
    assert _tree(files) == before_fixtures, name


def test_the_table_covers_every_verb_with_enough_cases():
    verbs = {c.split(":")[0].split(" ")[0] for c in CASES}
    assert verbs == {"train", "distill", "evaluate", "compare", "transfer", "report", "run", "data"}
    assert len(CASES) >= 60
