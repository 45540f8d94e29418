"""The run directory (`cfg.out`): what a run writes, the commit point, resume, and what a crash leaves.

Layout: config.yaml, metrics.jsonl (one line per epoch), last.pt (full training state,
`torch.load(weights_only=True)`-safe), last/best.{safetensors,json} (weights for `darht evaluate` /
`load_model(run_dir)`; best = highest validation robust accuracy, ties -> clean accuracy), tb/
(optional TensorBoard), .lock (held by the one process writing the directory; see darht.engine.lock).

Fail fast, lose nothing. Each epoch is saved in one order: its metrics line, then the weights
(last, and best if it improved), then last.pt, written atomically and last: last.pt is the commit
point. A run killed at any moment (SIGKILL, Ctrl-C, a full disk) continues with `--resume` to
the very same weights and records as an uninterrupted run (metrics lines after last.pt's epoch
are dropped; the RNG streams are restored as the last step before the loop). `--resume` refuses
a config that differs from the checkpoint's in anything that can change the math, before any
data is loaded. A full disk is reported with what is still intact.

RunDir owns this directory for the loop (darht.engine.trainer); rank 0 writes, every rank reads
last.pt. `log` lives here, not in the trainer, because this module logs too and the trainer imports it.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from darht.config import TrainConfig, dump_yaml, to_dict
from darht.engine import checkpoint as ckpt
from darht.engine import distributed as ddp
from darht.engine.resume import config_differences
from darht.engine.schedules import LRSchedule
from darht.engine.setup import tensorboard_writer
from darht.errors import DarhtError
from darht.models.io import save_model
from darht.utils import git_revision, seed_everything


def log(msg: str, info: ddp.DistInfo | None = None) -> None:
    if info is None or info.is_main:
        print(msg, file=sys.stderr, flush=True)


@dataclass
class Trainables:
    """The live objects whose state last.pt holds: the loop builds them, RunDir saves and restores them."""

    model: nn.Module  # the plain module (not a DDP or compiled wrapper)
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler | None
    method: Any


class RunDir:
    def __init__(self, cfg: TrainConfig, info: ddp.DistInfo):
        self.cfg, self.info = cfg, info
        self.path = Path(cfg.out)
        self.best: dict = {"epoch": 0, "val_robust": None, "val_clean": None}
        self.writer = None
        self.git: str | None = None
        self.committed: int | None = None  # epoch of the last.pt on disk, once known

    # ---- what is left (for Ctrl-C and a full disk) ----------------------------------------------
    def committed_text(self) -> str:
        path = self.path / ckpt.LAST
        if self.committed is not None:
            return f"the last good checkpoint is epoch {self.committed} in {path}; continue with --resume"
        if path.is_file():  # stopped before it was read
            return f"the last good checkpoint is in {path}; continue with --resume"
        return "no checkpoint was written yet"

    @contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """A full disk while writing `path` is the user's problem to fix: say what is intact."""
        try:
            yield
        except Exception as e:
            if not ckpt.is_disk_full(e):
                raise
            last = self.path / ckpt.LAST
            if self.committed is not None:
                kept = f"the last good checkpoint (epoch {self.committed}) is intact in {last}"
            elif last.is_file():
                kept = f"the last good checkpoint is intact in {last}"
            else:
                kept = "no checkpoint was written yet"
            raise DarhtError(f"disk full while writing {path}; {kept}") from None

    # ---- before set-up: the checkpoint to resume, and whether it may be resumed -----------------
    def open(self, resume: bool) -> dict | None:
        """The state in last.pt to continue from (None: a fresh start). Call with the lock held."""
        state = self._find_checkpoint(resume)
        if self.info.is_main:  # we hold the lock: temporaries of atomic writes are leftovers of a killed run
            ckpt.remove_stale_temporaries(self.path)
        if state is not None:
            self._check_resume_config(state)
        return state

    def _find_checkpoint(self, resume: bool) -> dict | None:
        path = self.path / ckpt.LAST
        if not resume:
            if path.exists():
                raise DarhtError(f"{self.path} already holds a run; resume it or choose another output directory")
            return None
        if not path.exists():
            log(f"no checkpoint in {self.path}: starting a fresh run", self.info)
            return None
        state = ckpt.load_checkpoint(path)
        self.committed = int(state["epoch"])
        return state

    def _check_resume_config(self, state: dict) -> None:
        """Resume means resume: the rest of the run must be what the checkpoint's run would have
        done. Any difference that can change the math is refused (before any data is loaded)."""
        old = state.get("config")
        if not isinstance(old, dict):
            log(f"note: {self.path / ckpt.LAST} records no config; cannot check that --resume "
                "continues the same run", self.info)
            return
        diffs = config_differences(old, to_dict(self.cfg))
        if diffs:
            raise DarhtError(f"--resume: the config differs from the checkpoint's: {', '.join(diffs)}; "
                             "undo the change or start a new run directory")

    # ---- after set-up: restore, then make the directory ready ------------------------------------
    def restore(self, state: dict, t: Trainables) -> int:
        """Load `state` into `t` (and `best`); returns the epoch to start from."""
        try:
            t.model.load_state_dict(state["model"])
            t.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise DarhtError(f"{self.path / ckpt.LAST} does not match this config's model: "
                             f"{str(e).splitlines()[0]}") from None
        t.schedule.load_state_dict(state.get("scheduler") or {})
        if t.scaler is not None and state.get("scaler"):
            t.scaler.load_state_dict(state["scaler"])
        t.method.load_state_dict(state.get("method") or {})
        self.best = state.get("best", self.best)
        if self.info.is_main:
            with self._writing(self.path / ckpt.METRICS):
                torn = ckpt.truncate_metrics(self.path, state["epoch"])
            if torn:
                log(f"note: dropped {torn} unreadable line(s) of {self.path / ckpt.METRICS} "
                    "(torn by a crash mid-write)", self.info)
        log(f"resuming {self.path} after epoch {state['epoch']}", self.info)
        return int(state["epoch"])

    def restore_rng(self, state: dict | None) -> None:
        """Last step before the loop, so no set-up work consumes the restored streams."""
        rank = self.info.rank
        if state is not None and rank < len(state.get("rng", [])):
            ckpt.set_rng_state(state["rng"][rank])
        elif rank > 0:  # each rank draws its own attack starts / dropout masks
            seed_everything(self.cfg.seed + 1_000_003 * rank + (state or {}).get("epoch", 0))

    def prepare(self, fresh: bool) -> None:
        """Rank 0: the directory, config.yaml and the TensorBoard writer; a fresh start drops
        records a crashed attempt left before any last.pt."""
        if not self.info.is_main:
            return
        self.git = git_revision()
        self.path.mkdir(parents=True, exist_ok=True)
        if fresh:
            with self._writing(self.path / ckpt.METRICS):
                ckpt.truncate_metrics(self.path, 0)
        with self._writing(self.path / "config.yaml"):
            dump_yaml(self.cfg, self.path / "config.yaml")
        with self._writing(self.path / "tb"):
            self.writer = tensorboard_writer(self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ---- each epoch (rank 0), and the end --------------------------------------------------------
    def save(self, epoch: int, record: dict, improved: bool, rngs: list[dict], t: Trainables) -> None:
        """Order matters for crash safety: records and weights first, last.pt (the commit point)
        last; a resume drops metrics lines after last.pt's epoch."""
        cfg, d = self.cfg, self.path
        with self._writing(d / ckpt.METRICS):
            ckpt.append_metrics(d, record)
        if self.writer is not None:
            for k, v in record.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, epoch)
        meta = {"method": cfg.method, "epoch": epoch, "data": cfg.data.name,
                "val_clean": record.get("val_clean"), "val_robust": record.get("val_robust")}
        with self._writing(d / "last.safetensors"):
            save_model(t.model, d / "last", meta=meta)
        if improved:
            with self._writing(d / "best.safetensors"):
                save_model(t.model, d / "best", meta=meta)
        state = {
            "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
            "scheduler": t.schedule.state_dict(),
            "scaler": t.scaler.state_dict() if t.scaler is not None else None,
            "epoch": epoch, "epochs": cfg.epochs, "method": t.method.state_dict(),
            "rng": rngs, "config": to_dict(cfg), "git": self.git, "best": dict(self.best),
        }
        with self._writing(d / ckpt.LAST):
            ckpt.save_checkpoint(d / ckpt.LAST, ckpt.to_cpu(state))
        self.committed = epoch

    def summary(self, epochs_done: int) -> dict:
        d = self.path
        return {"run_dir": str(d), "epochs": epochs_done, "best_epoch": self.best["epoch"],
                "best_val_robust": self.best["val_robust"], "best_val_clean": self.best["val_clean"],
                "checkpoint": str(d / ckpt.LAST), "best": str(d / "best.safetensors"),
                "last": str(d / "last.safetensors"), "metrics": str(d / ckpt.METRICS)}
