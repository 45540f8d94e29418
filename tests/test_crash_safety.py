"""Fail fast, lose nothing: a run killed at any moment (SIGKILL, Ctrl-C, a full disk, a torn
metrics line) continues with --resume to the same weights and records as an uninterrupted run;
one writer per run directory; --resume refuses a changed config. All on CPU, tiny."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from darht.cli import main
from darht.config import make_config
from darht.engine import checkpoint as ckpt
from darht.engine import trainer
from darht.engine.lock import RunLock
from darht.engine.trainer import train
from darht.errors import DarhtError

REPO = Path(__file__).resolve().parents[1]
WALL_CLOCK = ("time", "images_per_s")


def raw_cfg(n: int = 128, epochs: int = 3, **top) -> dict:
    raw = {
        "data": {"name": "synthetic", "kwargs": {"n": n, "shape": [1, 12, 12], "num_classes": 4},
                 "val_fraction": 0.25, "augment": True, "padding": 2},
        "model": {"name": "small-cnn", "kwargs": {"width": 8}},
        "method": "pgd-at", "method_args": {"eps": 0.1, "alpha": 0.05, "steps": 1},
        "eval": {"attack": "pgd", "eps": 0.1, "steps": 1, "n": 32},
        "optim": {"lr": 0.1, "schedule": "multistep", "milestones": [0.5]},
        "epochs": epochs, "batch_size": 32, "seed": 5, "device": "cpu", "progress": False,
    }
    for k, v in top.items():
        raw[k] = {**raw[k], **v} if k in ("data", "model", "optim", "eval") else v
    return raw


def cfg_for(out: Path, **kw):
    return make_config({**raw_cfg(**kw), "out": str(out)})


def records(run: Path) -> list[dict]:
    """Every line must parse (a repaired file); wall-clock fields dropped."""
    out = []
    for line in (run / ckpt.METRICS).read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in WALL_CLOCK})
    return out


def assert_same_run(run: Path, ref: Path) -> None:
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(run / name), load_file(ref / name)
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k}"
    ra, rb = records(run), records(ref)
    assert [r["epoch"] for r in ra] == list(range(1, len(rb) + 1))
    assert ra == rb
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run: what every interrupted run below must end up as."""
    d = tmp_path_factory.mktemp("ref") / "run"
    train(cfg_for(d))
    return d


# ---- in-process: torn line, full disk, Ctrl-C, changed config, lock ----------------------------
def _commit_only_first(monkeypatch):
    """The process 'dies' after epoch 2's metrics line, before its last.pt."""
    real, calls = ckpt.save_checkpoint, []

    def save(path, state):
        calls.append(state["epoch"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(path, state)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)


def test_torn_metrics_line_is_skipped_and_repaired_on_resume(ref, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _commit_only_first(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(run))
    monkeypatch.undo()
    first, second = (run / ckpt.METRICS).read_text().splitlines()
    (run / ckpt.METRICS).write_text(first + "\n" + second[: len(second) // 2])  # torn mid-append
    assert [r["epoch"] for r in ckpt.read_metrics(run)] == [1]  # read, not crash
    (run / ".last.pt.k1ll3d.tmp").write_bytes(b"partial")  # a temporary a SIGKILL left: removed
    (run / "notes.tmp").write_text("mine")  # not ours: kept
    train(cfg_for(run), resume=True)
    assert "dropped 1 unreadable line" in capsys.readouterr().err
    (run / "notes.tmp").unlink()
    assert_same_run(run, ref)


class _Full:
    """The writer `real`, except that its n-th call runs `fail` (the disk fills up)."""

    def __init__(self, real, nth, fail):
        self.real, self.nth, self.fail, self.calls = real, nth, fail, 0

    def __call__(self, *args, **kw):
        self.calls += 1
        return (self.fail if self.calls == self.nth else self.real)(*args, **kw)


def _partial_file_then(exc):
    def fail(obj, path, *a, **kw):
        Path(path).write_bytes(b"partial")
        raise exc
    return fail


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["checkpoint", "checkpoint-opaque", "weights", "metrics"])
def test_disk_full_keeps_the_last_good_checkpoint(where, ref, tmp_path, monkeypatch):
    import darht.models.io as mio
    from safetensors import SafetensorError

    run = tmp_path / "run"
    committed = []  # model weights of each last.pt that was written
    real_save = ckpt.save_checkpoint

    def spy(path, state):
        real_save(path, state)
        committed.append({k: v.clone() for k, v in state["model"].items()})

    monkeypatch.setattr(ckpt, "save_checkpoint", spy)
    if where == "checkpoint":  # torch.save fails in epoch 2
        monkeypatch.setattr(torch, "save", _Full(torch.save, 2, _partial_file_then(_enospc())))
        path = run / "last.pt"
    elif where == "checkpoint-opaque":  # what torch really raises on ENOSPC: no errno, only a short write
        short_write = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        monkeypatch.setattr(torch, "save", _Full(torch.save, 2, _partial_file_then(short_write)))
        full = os.statvfs(tmp_path)
        monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result(  # the file system is full
            tuple(0 if i in (3, 4) else v for i, v in enumerate(full))))
        path = run / "last.pt"
    elif where == "weights":  # epoch 1 writes last + best; epoch 2's last.safetensors fails
        rust = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(mio, "save_file", _Full(mio.save_file, 3, _partial_file_then(rust)))
        path = run / "last.safetensors"
    else:  # the metrics append gets half a line out, then ENOSPC
        def half_then_full(fd, data):
            os.write(fd, data[: len(data) // 2])
            raise _enospc()
        monkeypatch.setattr(ckpt, "_write_all", _Full(ckpt._write_all, 2, half_then_full))
        path = run / "metrics.jsonl"
    with pytest.raises(DarhtError) as e:
        train(cfg_for(run))
    assert str(e.value) == (f"disk full while writing {path}; the last good checkpoint (epoch 1) is intact in "
                            f"{run / 'last.pt'}")
    monkeypatch.undo()
    state = ckpt.load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and len(committed) == 1
    assert all(torch.equal(state["model"][k], v) for k, v in committed[0].items())
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # no temporary left
    if where == "metrics":  # the half line was cut off again
        assert (run / ckpt.METRICS).read_text().count("\n") == 1 and len(ckpt.read_metrics(run)) == 1
    train(cfg_for(run), resume=True)  # space freed: the run continues to the same result
    assert_same_run(run, ref)


def test_metrics_line_is_one_synced_write(tmp_path, monkeypatch):
    writes, syncs = [], []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(os, "write", lambda fd, b: writes.append(bytes(b)) or real_write(fd, b))
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append(fd) or real_fsync(fd))
    ckpt.append_metrics(tmp_path, {"epoch": 1, "loss": 0.5})
    monkeypatch.undo()
    assert writes == [b'{"epoch": 1, "loss": 0.5}\n'] and len(syncs) == 1


def test_ctrl_c_names_the_last_good_checkpoint(ref, tmp_path, monkeypatch, capsys):
    real = trainer._Run._train_epoch

    def interrupt_in(n):
        def epoch(self, e):
            if e == n:
                raise KeyboardInterrupt
            return real(self, e)
        return epoch

    run = tmp_path / "run"
    monkeypatch.setattr(trainer._Run, "_train_epoch", interrupt_in(1))
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(run))
    assert (f"interrupted: the last good checkpoint is epoch 1 in {run / 'last.pt'}; continue with --resume"
            in capsys.readouterr().err.splitlines())
    # through the CLI: exit 130; nothing written yet is said as such
    monkeypatch.setattr(trainer._Run, "_train_epoch", interrupt_in(0))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw_cfg()))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "other")]) == 130
    assert "interrupted: no checkpoint was written yet" in capsys.readouterr().err.splitlines()
    monkeypatch.undo()
    # silent keys (progress, workers) may change on resume; the run ends as if never stopped
    train(make_config({**raw_cfg(progress=True, workers=1), "out": str(run)}), resume=True)
    assert_same_run(run, ref)


def test_resume_refuses_a_changed_config(ref, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(ref, run)

    def no_data(self):
        raise AssertionError("data loaded before the config check")

    monkeypatch.setattr(trainer._Run, "_setup_data", no_data)
    with pytest.raises(DarhtError) as e:
        train(cfg_for(run, optim={"lr": 0.05}, epochs=5), resume=True)
    assert str(e.value) == ("--resume: the config differs from the checkpoint's: optim.lr 0.1 -> 0.05, epochs 3 -> 5; "
                            "undo the change or start a new run directory")
    with pytest.raises(DarhtError) as e:
        train(cfg_for(run, model={"kwargs": {"width": 16}}, method_args={"eps": 0.1, "alpha": 0.05}), resume=True)
    assert "model.kwargs.width 8 -> 16, method_args.steps 1 -> (unset);" in str(e.value)
    assert "\n" not in str(e.value)
    # keys that cannot change the math may differ: out (the directory moved), device, progress, workers
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    summary = train(make_config({**raw_cfg(device="auto", progress=True, workers=2), "out": str(moved)}),
                    resume=True)
    assert summary["epochs"] == 3 and "already finished" in capsys.readouterr().err


def test_lock_refuses_a_second_writer_and_failed_starts_leave_no_directory(tmp_path, monkeypatch, capsys):
    run = tmp_path / "a" / "b" / "run"
    with RunLock(run):
        assert (run / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(DarhtError) as e:
            train(cfg_for(run))
        assert str(e.value) == (f"{run} is in use by another darht process (pid {os.getpid()}); "
                                "wait for it or choose another --out")
    assert not (tmp_path / "a").exists()  # the lock made a/b/run, and removed it unused
    with pytest.raises(DarhtError, match="nope"):  # fails after the lock: no directory left
        train(cfg_for(tmp_path / "x" / "run", method_args={"nope": 1}))
    assert not (tmp_path / "x").exists()

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer._Run, "_setup_data", interrupted)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while loading data
        train(cfg_for(tmp_path / "y"))
    assert not (tmp_path / "y").exists()
    assert "interrupted: no checkpoint was written yet" in capsys.readouterr().err
    (tmp_path / "z").mkdir()  # a directory that existed before is kept
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tmp_path / "z"))
    assert (tmp_path / "z").is_dir()
    monkeypatch.undo()
    with RunLock(tmp_path / "z"):  # and the lock is free again
        pass


# ---- subprocesses: two writers at once, SIGKILL at random moments ------------------------------
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
SUB = dict(n=384, epochs=8)  # ~0.15 s an epoch here: short, but long enough to be killed inside one


class Proc:
    def __init__(self, cwd: Path, argv: list[str], name: str):
        self.err_path = cwd / f"{name}.err"
        with open(self.err_path, "w") as err:
            self.p = subprocess.Popen([sys.executable, "-m", "darht", *argv], cwd=cwd, env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=err)
        self.t0 = time.monotonic()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def wait_until(self, cond, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not cond() and self.p.poll() is None:
            if time.monotonic() > deadline:
                self.p.kill()
                raise AssertionError(f"timed out; stderr:\n{self.err[-3000:]}")
            time.sleep(0.01)

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f"timed out; stderr:\n{self.err[-3000:]}") from None


def _epoch_lines(text: str) -> int:
    return len(re.findall(r"^epoch \d+/\d+ ", text, re.M))


def test_python_m_darht_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "darht", "--help"], env=ENV, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "train" in out.stdout and "distill" in out.stdout


@pytest.fixture(scope="module")
def race(tmp_path_factory) -> dict:
    """Two `darht train` into one --out, started at once. The winner is also the uninterrupted
    reference for the SIGKILL test."""
    d = tmp_path_factory.mktemp("race")
    (d / "cfg.yaml").write_text(yaml.safe_dump(raw_cfg(**SUB)))
    out = d / "run"
    procs = [Proc(d, ["train", "--config", str(d / "cfg.yaml"), "--out", str(out)], f"p{i}") for i in (0, 1)]
    deadline = time.monotonic() + 120
    while all(p.p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "neither run ended"
        time.sleep(0.01)
    t_first = time.monotonic()
    first = next(p for p in procs if p.p.poll() is not None)
    other = procs[1 - procs.index(first)]
    still_running = other.p.poll() is None
    other.finish()
    return {"first": first, "other": other, "still_running": still_running,
            "gap": time.monotonic() - t_first, "out": out, "dir": d}


def test_two_writers_into_one_directory(race):
    loser, winner = race["first"], race["other"]
    assert loser.p.returncode == 2, loser.err[-3000:]
    assert winner.p.returncode == 0, winner.err[-3000:]
    assert race["still_running"] and race["gap"] > 1.0  # refused at once, not after a run
    assert loser.err.splitlines() == [
        f"darht: error: {race['out']} is in use by another darht process (pid {winner.p.pid}); "
        "wait for it or choose another --out"]


def _kill_and_resume(cwd: Path, argv: list[str], run: Path, epoch_s: float, seed: int, kills: int = 3) -> int:
    """Kill `darht ...` with SIGKILL `kills` times at random moments (each attempt resuming the
    previous one), then let a last --resume finish. Returns how many kills hit a running process."""
    rng = random.Random(seed)
    hits = 0
    for k in range(kills):
        p = Proc(cwd, argv + (["--resume"] if k else []), f"kill{k}")
        if k == 0:  # somewhere in the first epochs of a fresh run (maybe before any last.pt)
            p.wait_until(lambda: (run / "config.yaml").exists())
        else:  # after this attempt committed an epoch: somewhere in the next one (train, validate, save)
            p.wait_until(lambda: _epoch_lines(p.err) >= 1)
        time.sleep(rng.uniform(0, 1.5 * epoch_s))
        hits += p.p.poll() is None
        p.p.kill()
        p.p.wait()
        if (run / "last.pt").exists():
            ckpt.load_checkpoint(run / "last.pt")  # never a partial file
    p = Proc(cwd, argv + ["--resume"], "final")
    assert p.finish() == 0, p.err[-3000:]
    return hits


def test_sigkill_at_random_moments_then_resume_is_bit_identical(race, tmp_path):
    ref = race["out"]
    epoch_s = max(r["time"] for r in map(json.loads, (ref / ckpt.METRICS).read_text().splitlines()))
    run = tmp_path / "run"
    hits = _kill_and_resume(tmp_path, ["train", "--config", str(race["dir"] / "cfg.yaml"), "--out", str(run)],
                            run, epoch_s, seed=11)
    assert hits >= 2  # the kills landed in running processes
    assert_same_run(run, ref)


def test_sigkill_distill_then_resume_is_bit_identical(tmp_path):
    teacher = tmp_path / "teacher"
    train(cfg_for(teacher, epochs=1, n=256))
    raw = raw_cfg(**{**SUB, "epochs": 5}, method="darht", teachers=[str(teacher)], method_args={"eps": 0.1, "steps": 1, "mc_samples": 2},
                  model={"kwargs": {"width": 4}}, eval={"eot": 2, "draws": 2})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    argv = ["distill", "--config", str(tmp_path / "cfg.yaml"), "--no-progress"]
    ref = tmp_path / "ref"
    assert main(argv + ["--out", str(ref)]) == 0  # uninterrupted, in this process
    epoch_s = max(r["time"] for r in map(json.loads, (ref / ckpt.METRICS).read_text().splitlines()))
    run = tmp_path / "run"
    hits = _kill_and_resume(tmp_path, argv + ["--out", str(run)], run, epoch_s, seed=12, kills=2)
    assert hits >= 1
    assert_same_run(run, ref)
