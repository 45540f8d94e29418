"""Data-parallel training: 2 gloo processes launched by torch's launcher, on CPU, tiny.

A 2-process run with global batch B takes the same examples per step as a 1-process run with
batch B (the loader shards each epoch's permutation), and DDP averages the per-rank mean losses'
gradients, so both end at the same weights within float tolerance, for `pgd-at` and `darht`.
What cannot match across process counts is switched off: random attack starts, dropout, the
adversarial coin (adv_prob 1), augmentation; and the model (a ViT: LayerNorm) has no
normalization that depends on the per-rank batch. A third run, `darht-official` on a BatchNorm
CNN with bf16 gradient compression over two epochs (its CE-only and KD-only phases, the latter
leaving the classifier without a gradient), checks what does not need equivalence: one writer,
identical ranks, and one adversarial coin per *global* batch; a fourth, `cat` over three epochs,
that every rank takes its curriculum decision on the same (all-reduced) accuracy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from darht.config import make_config
from darht.engine.trainer import train

K, SHAPE = 4, [1, 12, 12]
N, VAL, BATCH = 64, 0.25, 24     # 48 train examples: 2 steps of 24 (2 ranks x 12)
N_TRAIN = N - int(round(N * VAL))
VIT = {"name": "vit-tiny", "kwargs": {"depth": 1, "embed_dim": 16, "num_heads": 2, "patch_size": 4}}
ATTACK = {"eps": 0.1, "alpha": 0.05, "steps": 1}


def raw_cfg(out: Path, **top) -> dict:
    raw = {
        "data": {"name": "synthetic", "kwargs": {"n": N, "shape": SHAPE, "num_classes": K},
                 "val_fraction": VAL, "augment": False},
        "model": VIT, "method": "pgd-at", "method_args": dict(ATTACK),
        "eval": {"attack": "pgd", "eps": 0.1, "steps": 1, "n": 16},
        "optim": {"lr": 0.1, "schedule": "constant"},
        "epochs": 1, "batch_size": BATCH, "seed": 5, "device": "cpu", "out": str(out), "progress": False,
    }
    raw.update(top)
    return raw


def runs(tmp: Path, teacher: str) -> dict[str, dict]:
    """name -> raw config of each run (its `out` under `tmp/<name>`)."""
    darht_args = {**ATTACK, "start": "none", "adv_prob": 1.0, "dropout": 0.0, "mc_samples": 1}
    return {
        "pgd-at": raw_cfg(tmp / "pgd-at"),
        "darht": raw_cfg(tmp / "darht", method="darht", teachers=[teacher], method_args=darht_args),
        "official": raw_cfg(tmp / "official", method="darht-official", teachers=[teacher], epochs=2,
                            model={"name": "small-cnn", "kwargs": {"width": 4}},
                            method_args={**ATTACK, "adv_prob": 0.5}, ddp_bf16_compress=True),
        "cat": raw_cfg(tmp / "cat", method="cat", epochs=3, method_args={**ATTACK, "patience": 1}),
    }


SCRIPT = """
import faulthandler, json, os, sys, torch, torch.distributed as dist
faulthandler.dump_traceback_later(200, exit=True)  # a hang shows where, and ends this worker
from darht.config import make_config
from darht.engine import rundir, trainer
from darht.engine.trainer import train
import darht.methods.pgd_at as pgd_at
from darht.methods.darht import Darht

pgd = pgd_at.pgd
pgd_at.pgd = lambda *a, **kw: pgd(*a, **{**kw, "start": "none"})  # no random start
rank = int(os.environ["RANK"])
open(os.path.join(sys.argv[2], f"pid{rank}"), "w").write(str(os.getpid()))
seen = {"saved": 0, "coins": []}
save = rundir.RunDir.save
def counting_save(self, *a, **kw):  # only rank 0 writes
    seen["saved"] += 1
    return save(self, *a, **kw)
rundir.RunDir.save = counting_save
epoch = trainer._Run._epoch
def grab(self, e):
    epoch(self, e)
    seen["model"] = {k: v.clone() for k, v in self.model.state_dict().items()}
trainer._Run._epoch = grab
choose = Darht.choose
def record(self, n, device):
    chosen = choose(self, n, device)
    seen["coins"].append(chosen.float().mean().item())
    return chosen
Darht.choose = record
from darht.methods.cat import CAT
close = CAT.close_epoch
def lesson(self, acc):  # CAT's curriculum: the accuracy each rank decides on, and its k after
    close(self, acc)
    seen["lessons"].append((acc, self.k))
CAT.close_epoch = lesson
out = {}
for i, (name, raw) in enumerate(json.loads(open(sys.argv[1]).read()).items()):
    if i == 1:  # the first run joined and left torchrun's group itself; a group on a fresh store for
        # the rest (torchrun's store still holds the first group's keys: joining again can hang)
        store = dist.FileStore(os.path.join(sys.argv[2], "store"), 2)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    seen.update(saved=0, coins=[], lessons=[])
    train(make_config(raw))
    out[name] = {"saved": seen["saved"], "model": seen["model"], "coins": seen["coins"], "lessons": seen["lessons"]}
dist.destroy_process_group()
torch.save(out, os.path.join(sys.argv[2], f"rank{rank}.pt"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp: Path, configs: dict) -> None:
    (tmp / "runs.json").write_text(json.dumps(configs))
    (tmp / "script.py").write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(tmp / "script.py"), str(tmp / "runs.json"), str(tmp)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # own process group: a hang is killed whole
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        for f in tmp.glob("pid*"):  # the workers run in sessions of their own
            try:
                os.kill(int(f.read_text()), 9)
            except (ProcessLookupError, ValueError):
                pass
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-4000:]


def lines(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process(tmp_path, monkeypatch):
    from darht.models import create_model
    from darht.models.io import save_model
    import darht.methods.pgd_at as pgd_at

    torch.manual_seed(0)
    teacher = create_model("small-cnn", K, in_chans=1, img_size=12, width=4)
    save_model(teacher, tmp_path / "teacher")
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    launch(two, runs(two, str(tmp_path / "teacher.safetensors")))

    pgd = pgd_at.pgd
    monkeypatch.setattr(pgd_at, "pgd", lambda *a, **kw: pgd(*a, **{**kw, "start": "none"}))
    single = runs(one, str(tmp_path / "teacher.safetensors"))
    for name in ("pgd-at", "darht"):
        train(make_config(single[name]))

    r0, r1 = (torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, epochs in (("pgd-at", 1), ("darht", 1), ("official", 2), ("cat", 3)):
        assert r0[name]["saved"] == epochs and r1[name]["saved"] == 0, name  # one writer
        recs = lines(two / name)
        assert [r["epoch"] for r in recs] == list(range(1, epochs + 1)), name
        assert all(r["train_examples"] == N_TRAIN and r["val_examples"] == 16 for r in recs), name
        state = torch.load(two / name / "last.pt", weights_only=True)
        assert len(state["rng"]) == 2  # every rank's RNG streams
        for k, v in r0[name]["model"].items():  # DDP keeps the ranks identical (buffers: rank 0's)
            assert torch.equal(v, r1[name]["model"][k]), (name, k)
            assert torch.equal(v, state["model"][k]), (name, k)

    from darht.utils import seed_everything

    seed_everything(single["pgd-at"]["seed"])  # what the pgd-at run starts from
    init = create_model(VIT["name"], K, in_chans=1, img_size=12, **VIT["kwargs"]).state_dict()
    for name in ("pgd-at", "darht"):  # the same weights as one process with the same global batch
        a = torch.load(one / name / "last.pt", weights_only=True)["model"]
        b = r0[name]["model"]
        assert a.keys() == b.keys()
        if name == "pgd-at":  # training moved the weights far more than the tolerance
            assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-2
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (name, k, (a[k] - b[k]).abs().max())
        (la,), (lb,) = lines(one / name), lines(two / name)
        assert la["train_loss"] == pytest.approx(lb["train_loss"], rel=1e-5)

    # CAT: every rank decides its curriculum on the same global accuracy, so k moves together
    l0, l1 = r0["cat"]["lessons"], r1["cat"]["lessons"]
    assert len(l0) == 2 and l0 == l1  # decisions at the starts of epochs 2 and 3
    assert all(0 <= acc <= 1 and k in (0, 1) for acc, k in l0)

    # darht-official: one coin per global batch; 2 epochs x 2 steps, the same on both ranks
    c0, c1 = r0["official"]["coins"], r1["official"]["coins"]
    assert len(c0) == 4 and c0 == c1 and set(c0) <= {0.0, 1.0}
