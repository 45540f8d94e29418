"""The training engine: lr schedules vs their formulas, learning, checkpoints, resume bit-identity,
best-checkpoint choice, AMP, compile fallback (all on CPU, tiny); data-parallel runs: test_ddp.py."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from darht.config import OptimConfig, make_config
from darht.engine import checkpoint as ckpt
from darht.engine.schedules import LRSchedule, lr_factor
from darht.methods.base import OriginalSchedule
from darht.engine.trainer import is_better, train, validate
from darht.errors import DarhtError

N, SHAPE, K, VAL = 256, [1, 12, 12], 4, 0.25   # 192 train / 64 val examples
N_TRAIN = N - int(round(N * VAL))


def raw_cfg(out: Path, **top) -> dict:
    raw = {
        "data": {"name": "synthetic", "kwargs": {"n": N, "shape": SHAPE, "num_classes": K},
                 "val_fraction": VAL, "augment": False},
        "model": {"name": "small-cnn", "kwargs": {"width": 8}},
        "method": "pgd-at", "method_args": {"eps": 0.1, "alpha": 0.05, "steps": 2},
        "eval": {"attack": "pgd", "eps": 0.1, "steps": 2, "n": 64},
        "optim": {"lr": 0.1, "schedule": "constant"},
        "epochs": 2, "batch_size": 32, "seed": 3, "device": "cpu", "out": str(out), "progress": False,
    }
    for k, v in top.items():
        if k in ("data", "model", "optim", "eval"):  # sections merge; method_args is replaced
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    return raw


def cfg_for(out: Path, **top):
    return make_config(raw_cfg(out, **top))


def lines(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]


# ---- schedules --------------------------------------------------------------------------------
def test_schedules_match_formulas():
    ms = OptimConfig(schedule="multistep", milestones=[0.5, 0.75], gamma=0.1)
    # fractions of 10 epochs -> decays from epoch 5 and from epoch 7.5 (i.e. epoch 8) on
    assert [lr_factor(ms, e, 10) for e in range(10)] == pytest.approx([1] * 5 + [0.1] * 3 + [0.01] * 2)
    ab = OptimConfig(schedule="multistep", milestones=[60, 80], gamma=0.2)
    for e in (0, 59, 60, 79, 80, 99):
        assert lr_factor(ab, e, 100) == pytest.approx(0.2 ** ((e >= 60) + (e >= 80)))
    cos = OptimConfig(schedule="cosine")
    for e in range(12):
        assert lr_factor(cos, e, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * e / 12)))
    assert lr_factor(OptimConfig(schedule="constant"), 4, 5) == 1.0
    # the paper's Tiny ImageNet schedule: linear warm-up to the base lr by epoch 20, x0.1 at 60 and 80
    wm = OptimConfig(schedule="warmup-multistep", warmup_epochs=20, milestones=[60, 80], gamma=0.1)
    iters = 7
    for e in (0, 3, 19):
        for it in (0, 3, 6):
            assert lr_factor(wm, e, 100, it, iters) == pytest.approx((e * iters + it + 1) / (20 * iters))
    assert lr_factor(wm, 0, 100, 0, iters) > 0  # never an lr of 0
    assert lr_factor(wm, 19, 100, 6, iters) == pytest.approx(1.0)
    assert [lr_factor(wm, e, 100, 0, iters) for e in (20, 59, 60, 80)] == pytest.approx([1, 1, 0.1, 0.01])


def test_lr_schedule_sets_optimizer_and_rejects_bad_names():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.4)
    sched = LRSchedule(opt, OptimConfig(schedule="cosine"), epochs=4, iters=3)
    sched.set(2, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    original = OriginalSchedule(epochs=10, lr=0.1, momentum=0.9, weight_decay=0.0, batch_size=8,
                                milestones=(5,), lr_factors=(0.1,), source="a test")
    osched = LRSchedule(opt, OptimConfig(schedule="original"), epochs=20, iters=1, original=original)
    assert [osched.factor(e) for e in (9, 10)] == pytest.approx([1.0, 0.1])  # milestone 5 of 10 -> 10 of 20
    with pytest.raises(DarhtError):
        LRSchedule(opt, OptimConfig(schedule="step-ish"), epochs=4, iters=3)
    with pytest.raises(DarhtError):
        LRSchedule(opt, OptimConfig(schedule="warmup-multistep", warmup_epochs=0), epochs=4, iters=3)
    with pytest.raises(DarhtError):
        LRSchedule(opt, OptimConfig(schedule="original"), epochs=4, iters=3)


# ---- checkpoint helpers ------------------------------------------------------------------------
def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = ckpt.rng_state()
    ckpt.save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    first = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "epoch": 1})

    def broken_save(obj, f):  # dies half-way through writing
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "epoch": 2})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["epoch"] == 1  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DarhtError):
        ckpt.load_checkpoint(tmp_path / "bad.pt")


def test_best_is_robust_then_clean():
    best = {"epoch": 1, "val_robust": 0.30, "val_clean": 0.60}
    assert is_better({"val_robust": 0.31, "val_clean": 0.10}, best)
    assert is_better({"val_robust": 0.30, "val_clean": 0.61}, best)      # tie -> clean decides
    assert not is_better({"val_robust": 0.30, "val_clean": 0.60}, best)  # equal: keep the earlier
    assert not is_better({"val_robust": 0.29, "val_clean": 0.99}, best)
    assert is_better({"val_robust": 0.0, "val_clean": 0.0}, {"epoch": 1, "val_robust": None, "val_clean": None})
    # natural models (method.select_by == "clean") are chosen by clean accuracy first
    assert is_better({"val_robust": 0.10, "val_clean": 0.61}, best, "clean")
    assert not is_better({"val_robust": 0.31, "val_clean": 0.59}, best, "clean")


# ---- training runs ------------------------------------------------------------------------------
def untrained_robust(cfg) -> float:
    """Validation PGD accuracy of the model train() starts from (same seed, same split)."""
    from darht.data.base import load_dataset, split_train_val
    from darht.models import create_model
    from darht.utils import seed_everything

    data = load_dataset("synthetic", "train", None, n=N, shape=SHAPE, num_classes=K)
    _, val = split_train_val(data, VAL, cfg.seed)
    seed_everything(cfg.seed)
    model = create_model("small-cnn", num_classes=K, in_chans=1, img_size=12, width=8)
    _, robust, n = validate(model, val.float_x(), val.y, "pgd", eps=cfg.eval.eps, steps=cfg.eval.steps,
                            batch_size=32, device=torch.device("cpu"))
    return robust / n


def test_pgd_at_learns_and_writes_a_run(monkeypatch, tmp_path):
    cfg = cfg_for(tmp_path / "run", epochs=2)
    before = untrained_robust(cfg)
    summary = train(cfg)
    run = tmp_path / "run"
    recs = lines(run)
    assert [r["epoch"] for r in recs] == [1, 2]
    for r in recs:
        assert {"lr", "train_loss", "train_ce", "val_clean", "val_robust", "time", "images_per_s"} <= set(r)
        assert r["train_examples"] == N_TRAIN and r["val_examples"] == 64
    assert recs[-1]["train_loss"] < recs[0]["train_loss"]
    assert recs[-1]["val_robust"] > before
    # best = argmax of (robust, clean) over the validated epochs, earliest on exact ties
    want = max(recs, key=lambda r: (r["val_robust"], r["val_clean"], -r["epoch"]))
    assert summary["best_epoch"] == want["epoch"] and summary["best_val_robust"] == want["val_robust"]
    meta = json.loads((run / "best.json").read_text())["meta"]
    assert meta["epoch"] == want["epoch"] and meta["val_robust"] == want["val_robust"] and meta["method"] == "pgd-at"
    # files: atomic writes leave no temporaries; last.pt loads with weights_only=True
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["method"] == "pgd-at" and state["best"]["epoch"] == want["epoch"]
    assert {"model", "optimizer", "scheduler", "method", "rng", "git"} <= set(state)
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 2
    from darht.models.io import load_model

    exported = load_model(run)  # a run directory loads (best first)
    best_w = dict(exported.state_dict())
    assert best_w.keys() == state["model"].keys()
    with pytest.raises(DarhtError):  # a second run into the same directory would clobber it
        train(cfg)
    # model.weights: a new run starts from the exported best weights (no optimizer step: they stay put)
    cont = cfg_for(tmp_path / "cont", epochs=1, method="standard", method_args={},
                   model={"weights": str(run)})
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, closure=None: None)
    train(cont)
    after = load_model(tmp_path / "cont" / "last.safetensors")
    for name, p in after.named_parameters():
        assert torch.equal(p, best_w[name]), name


def test_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
    over = dict(data={"augment": True, "padding": 2, "limit": 128}, optim={"schedule": "multistep", "milestones": [0.5]},
                method_args={"eps": 0.1, "alpha": 0.05, "steps": 1})
    straight = train(cfg_for(tmp_path / "a", **over))

    real_save, calls = ckpt.save_checkpoint, []

    def crash_on_second(path, state):  # the process dies after training epoch 2, before last.pt
        calls.append(state["epoch"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(path, state)

    monkeypatch.setattr(ckpt, "save_checkpoint", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tmp_path / "b", **over))
    monkeypatch.undo()
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = train(cfg_for(tmp_path / "b", **over), resume=True)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    la, lb = lines(tmp_path / "a"), lines(tmp_path / "b")
    assert [r["epoch"] for r in lb] == [1, 2]  # the crashed epoch's line was dropped, then rewritten
    for ra, rb in zip(la, lb):
        assert ra["train_loss"] == rb["train_loss"] and ra["val_robust"] == rb["val_robust"]
    assert straight["best_epoch"] == resumed["best_epoch"]
    # a finished run is reported, not retrained; a resume without a checkpoint starts fresh
    mtime = (tmp_path / "a" / "last.pt").stat().st_mtime_ns
    assert train(cfg_for(tmp_path / "a", **over), resume=True)["epochs"] == 2
    assert (tmp_path / "a" / "last.pt").stat().st_mtime_ns == mtime
    assert "already finished" in capsys.readouterr().err


def test_bf16_channels_last_trades_on_cpu_and_fp16_refused(tmp_path):
    summary = train(cfg_for(tmp_path / "r", epochs=1, amp="bf16", channels_last=True, method="trades",
                            method_args={"eps": 0.1, "alpha": 0.05, "steps": 1},
                            optim={"schedule": "warmup-multistep", "warmup_epochs": 1, "milestones": [5]}))
    (rec,) = lines(tmp_path / "r")
    assert math.isfinite(rec["train_loss"]) and 0.0 <= rec["val_robust"] <= rec["val_clean"] <= 1.0
    assert summary["best_epoch"] == 1
    with pytest.raises(DarhtError, match="fp16"):
        train(cfg_for(tmp_path / "f", amp="fp16"))


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch):
    def broken_compile(model, *a, **kw):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        train(cfg_for(tmp_path / "r", epochs=1, compile=True, method="standard", method_args={}))
    assert len(lines(tmp_path / "r")) == 1


def test_bad_method_args_and_missing_teachers_are_user_errors(tmp_path):
    with pytest.raises(DarhtError, match="pgd-at"):
        train(cfg_for(tmp_path / "x", method_args={"not_an_arg": 1}))
    from darht.registry import METHODS

    needs = [m for m in METHODS.names() if getattr(METHODS.get(m), "needs_teachers", False)]
    assert needs, "some distillation method needs teachers"
    with pytest.raises(DarhtError, match="teachers"):
        train(cfg_for(tmp_path / "y", method=needs[0], method_args={}))
    with pytest.raises(DarhtError, match="diverged"):  # a NaN loss stops the run, last.pt untouched
        train(cfg_for(tmp_path / "z", epochs=1, method="standard", method_args={}, optim={"lr": 1e38}))
    assert not (tmp_path / "z" / "last.pt").exists()


# data-parallel (2 gloo processes under torch's launcher): tests/test_ddp.py
