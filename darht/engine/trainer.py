"""One training loop for teachers (adversarial training) and students (distillation) alike.

The method (darht.methods) turns a batch into losses; the trainer owns everything else: data,
optimizer and lr schedule, AMP, validation on a held-out split of train (never the test set),
checkpoints and resume, records, and data-parallel runs under torchrun. It never branches on
the method's name.

Run directory (`cfg.out`): config.yaml, metrics.jsonl (one line per epoch), last.pt (full
training state, `torch.load(weights_only=True)`-safe), last/best.{safetensors,json} (weights for
`darht evaluate` / `load_model(run_dir)`; best = highest validation robust accuracy, ties ->
clean accuracy), .lock (held by the one process writing the directory; see darht.engine.lock).

Fail fast, lose nothing: last.pt is the commit point (written last, atomically), so a run killed at
any moment (SIGKILL, Ctrl-C, a full disk) continues with `--resume` to the very same weights and
records as an uninterrupted run. `--resume` refuses a config that differs from the checkpoint's in
anything that can change the math.
"""

from __future__ import annotations

import math
import sys
import time

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from darht.config import TrainConfig, dump_yaml, to_dict
from darht.engine import checkpoint as ckpt
from darht.engine.resume import config_differences
from darht.engine.validate import is_better, validate
from darht.engine import distributed as ddp
from darht.engine.lock import rank0_lock
from darht.engine.schedules import LRSchedule
from darht.engine.setup import autocast_for, build_data, build_model, tensorboard_writer
from darht.errors import DarhtError
from darht.utils import git_revision, resolve_device, seed_everything


def log(msg: str, info: ddp.DistInfo | None = None) -> None:
    if info is None or info.is_main:
        print(msg, file=sys.stderr, flush=True)


def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    """Train `cfg.method` as configured; returns a summary (best epoch/metrics, paths).

    With `resume`, continue from `cfg.out`/last.pt (bit-identical to an uninterrupted run on CPU).
    Under torchrun (WORLD_SIZE > 1) every rank runs this; only rank 0 writes files and returns
    the summary (other ranks return {}, so a CLI prints it once).

    Only one process may write a run directory: rank 0 holds `cfg.out`/.lock for the whole run,
    and a second process is refused at once. Ctrl-C says which checkpoint is left, then re-raises.
    """
    _check_config(cfg)
    info, device = ddp.init_distributed(resolve_device(cfg.device))
    run = _Run(cfg, info, device)
    ok = False
    try:
        with rank0_lock(run.run_dir, info):
            summary = run.run(resume)
        ok = True
        return summary if info.is_main else {}
    except KeyboardInterrupt:
        log(f"interrupted: {run.committed_text()}", info)
        raise
    finally:
        if ok:
            ddp.cleanup(info)
        elif info.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # no barrier: other ranks may be gone


def _check_config(cfg: TrainConfig) -> None:
    if cfg.amp not in ("none", "bf16", "fp16"):
        raise DarhtError(f"amp must be none, bf16 or fp16, got '{cfg.amp}'")
    for name, v in (("epochs", cfg.epochs), ("batch_size", cfg.batch_size), ("eval.every", cfg.eval.every)):
        if v < 1:
            raise DarhtError(f"{name} must be >= 1, got {v}")


class _Run:
    def __init__(self, cfg: TrainConfig, info: ddp.DistInfo, device: torch.device):
        self.cfg, self.info, self.device = cfg, info, device
        self.run_dir = Path(cfg.out)
        self.best: dict = {"epoch": 0, "val_robust": None, "val_clean": None}
        self.writer = None
        self.committed: int | None = None  # epoch of the last.pt on disk, once known

    # ---- what is left (for Ctrl-C and a full disk) --------------------------------------------------
    def committed_text(self) -> str:
        path = self.run_dir / ckpt.LAST
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
            last = self.run_dir / ckpt.LAST
            if self.committed is not None:
                kept = f"the last good checkpoint (epoch {self.committed}) is intact in {last}"
            elif last.is_file():
                kept = f"the last good checkpoint is intact in {last}"
            else:
                kept = "no checkpoint was written yet"
            raise DarhtError(f"disk full while writing {path}; {kept}") from None

    # ---- set-up ----------------------------------------------------------------------------------
    def run(self, resume: bool) -> dict:
        try:
            return self._run(resume)
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None

    def _run(self, resume: bool) -> dict:
        cfg, info = self.cfg, self.info
        state = self._find_checkpoint(resume)
        if info.is_main:  # we hold the lock: temporaries of atomic writes are leftovers of a killed run
            ckpt.remove_stale_temporaries(self.run_dir)
        if state is not None:
            self._check_resume_config(state)
        if state is not None and state["epoch"] >= cfg.epochs:
            log(f"run {self.run_dir} already finished ({state['epoch']} of {cfg.epochs} epochs)", info)
            self.best = state.get("best", self.best)
            return self._summary(state["epoch"])
        seed_everything(cfg.seed)
        self._setup_data()
        self._setup_model()
        start = 0
        if state is not None:
            start = self._restore(state)
        if info.enabled:
            ddp.broadcast_module(self.model)
        self._restore_rng(state)
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if state is None:  # a fresh start: drop records a crashed attempt left before any last.pt
                with self._writing(self.run_dir / ckpt.METRICS):
                    ckpt.truncate_metrics(self.run_dir, 0)
            with self._writing(self.run_dir / "config.yaml"):
                dump_yaml(cfg, self.run_dir / "config.yaml")
            with self._writing(self.run_dir / "tb"):
                self.writer = tensorboard_writer(self.run_dir)
        for epoch in range(start, cfg.epochs):
            self._epoch(epoch)
        ddp.barrier(info)
        return self._summary(cfg.epochs)

    def _find_checkpoint(self, resume: bool) -> dict | None:
        path = self.run_dir / ckpt.LAST
        if not resume:
            if path.exists():
                raise DarhtError(f"{self.run_dir} already holds a run; resume it or choose another output directory")
            return None
        if not path.exists():
            log(f"no checkpoint in {self.run_dir}: starting a fresh run", self.info)
            return None
        state = ckpt.load_checkpoint(path)
        self.committed = int(state["epoch"])
        return state

    def _check_resume_config(self, state: dict) -> None:
        """Resume means resume: the rest of the run must be what the checkpoint's run would have
        done. Any difference that can change the math is refused (before any data is loaded)."""
        old = state.get("config")
        if not isinstance(old, dict):
            log(f"note: {self.run_dir / ckpt.LAST} records no config; cannot check that --resume "
                "continues the same run", self.info)
            return
        diffs = config_differences(old, to_dict(self.cfg))
        if diffs:
            raise DarhtError(f"--resume: the config differs from the checkpoint's: {', '.join(diffs)}; "
                             "undo the change or start a new run directory")

    def _setup_data(self) -> None:
        self.data, self.val, self.loader = build_data(self.cfg, self.info, self.device)

    def _setup_model(self) -> None:
        cfg, device = self.cfg, self.device
        self.model, self.net, self.method = build_model(cfg, self.data, device)  # model: the plain module
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov)
        self.schedule = LRSchedule(self.optimizer, cfg.optim, cfg.epochs, len(self.loader),
                                   getattr(type(self.method), "original_schedule", None))
        self.autocast = autocast_for(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
        self.git = git_revision() if self.info.is_main else None

    def _restore(self, state: dict) -> int:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise DarhtError(f"{self.run_dir / ckpt.LAST} does not match this config's model: "
                             f"{str(e).splitlines()[0]}") from None
        self.schedule.load_state_dict(state.get("scheduler") or {})
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state.get("method") or {})
        self.best = state.get("best", self.best)
        if self.info.is_main:
            with self._writing(self.run_dir / ckpt.METRICS):
                torn = ckpt.truncate_metrics(self.run_dir, state["epoch"])
            if torn:
                log(f"note: dropped {torn} unreadable line(s) of {self.run_dir / ckpt.METRICS} "
                    "(torn by a crash mid-write)", self.info)
        log(f"resuming {self.run_dir} after epoch {state['epoch']}", self.info)
        return int(state["epoch"])

    def _restore_rng(self, state: dict | None) -> None:
        """Last step before the loop, so no set-up work consumes the restored streams."""
        rank = self.info.rank
        if state is not None and rank < len(state.get("rng", [])):
            ckpt.set_rng_state(state["rng"][rank])
        elif rank > 0:  # each rank draws its own attack starts / dropout masks
            seed_everything(self.cfg.seed + 1_000_003 * rank + (state or {}).get("epoch", 0))

    # ---- one epoch -------------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> None:
        cfg, info = self.cfg, self.info
        t0 = time.perf_counter()
        lr_scale = self.schedule.set(epoch, 0)
        self.method.start_epoch(epoch, cfg.epochs, lr_scale=lr_scale)
        train = self._train_epoch(epoch)
        t_train = time.perf_counter() - t0
        if info.enabled:
            ddp.broadcast_buffers(self.model)  # BN statistics: rank 0's, on every rank
        val = {}
        if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.epochs:
            val = self._validate()
        improved = self._update_best(epoch + 1, val)
        record = {"epoch": epoch + 1, "lr": cfg.optim.lr * lr_scale, **train, **val,
                  "time": time.perf_counter() - t0, "images_per_s": train["train_examples"] / max(t_train, 1e-9)}
        rngs = ddp.all_gather_object(ckpt.rng_state(), info)
        if info.is_main:
            self._save(epoch + 1, record, improved, rngs)
        log(_epoch_line(record, cfg.epochs), info)

    def _train_epoch(self, epoch: int) -> dict:
        from tqdm import tqdm

        cfg, info, model = self.cfg, self.info, self.model
        self.loader.set_epoch(epoch)
        self.net.train()  # the module the method calls (a compiled wrapper's flag must follow too)
        params = [p for p in model.parameters() if p.requires_grad]
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        n_batches = len(self.loader)
        every = max(1, n_batches // 20)  # progress-bar refreshes: each one costs a device sync
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
        t0 = time.perf_counter()
        for it, (x, y) in enumerate(self.loader):
            self.schedule.set(epoch, it)
            if cfg.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                out = self.method.loss(x, y)
            self._step(out["loss"], params)
            n = y.shape[0]
            count += n
            for key, v in out.items():  # detached sums; converted once per epoch (no per-step sync)
                part = v.detach().double() * n
                sums[key] = sums[key] + part if key in sums else part
            bar.update(1)
            if not bar.disable and (it + 1) % every == 0:
                seen = count.item() * info.world_size
                bar.set_postfix(loss=f"{(sums['loss'] / count).item():.4f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.close()
        keys = sorted(sums)  # every rank has the same keys: same method, same code path
        totals = torch.stack([sums[k] for k in keys] + [count])
        if info.enabled:
            ddp.all_reduce_sum(totals)
        totals = totals.tolist()
        n_total = totals[-1]
        means = {f"train_{k}": (v / n_total if n_total else math.nan) for k, v in zip(keys, totals)}
        if not math.isfinite(means.get("train_loss", 0.0)):  # checked once per epoch: no extra syncs
            raise DarhtError(f"training diverged: mean loss {means['train_loss']} in epoch {epoch + 1} "
                             "(try a lower optim.lr, optim.grad_clip, or amp: none); last.pt keeps the "
                             "previous epoch")
        return {**means, "train_examples": int(n_total)}

    def _step(self, loss: torch.Tensor, params: list[nn.Parameter]) -> None:
        scaler = self.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.info.enabled:
            ddp.average_gradients(params, self.info.world_size)
        if self.cfg.optim.grad_clip:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()

    # ---- validation, best, saving ----------------------------------------------------------------
    def _validate(self) -> dict:
        cfg, info = self.cfg, self.info
        n = min(cfg.eval.n, len(self.val))
        if n == 0:
            return {}
        idx = torch.arange(info.rank, n, info.world_size)  # each rank validates its share
        part = self.val.subset(idx)
        # no autocast: validation attacks and verdicts run in fp32 (they choose the best checkpoint)
        counts = validate(self.net, part.float_x(), part.y, cfg.eval.attack, eps=cfg.eval.eps,
                          steps=cfg.eval.steps, batch_size=cfg.batch_size, device=self.device,
                          eot=cfg.eval.eot, draws=cfg.eval.draws)
        totals = torch.tensor(counts, dtype=torch.float64, device=self.device)
        if info.enabled:
            ddp.all_reduce_sum(totals)
        clean, robust, total = totals.tolist()
        return {"val_clean": clean / total, "val_robust": robust / total, "val_examples": int(total)}

    def _update_best(self, epoch: int, val: dict) -> bool:
        """Without any validation yet, the latest epoch stands in (so `best` always exists)."""
        if not val:
            if self.best["val_robust"] is None:
                self.best = {"epoch": epoch, "val_robust": None, "val_clean": None}
                return True
            return False
        if is_better(val, self.best, getattr(self.method, "select_by", "robust")):
            self.best = {"epoch": epoch, "val_robust": val["val_robust"], "val_clean": val["val_clean"]}
            return True
        return False

    def _save(self, epoch: int, record: dict, improved: bool, rngs: list[dict]) -> None:
        """Order matters for crash safety: records and weights first, last.pt (the commit point)
        last; a resume drops metrics lines after last.pt's epoch."""
        from darht.models.io import save_model

        cfg, d = self.cfg, self.run_dir
        with self._writing(d / ckpt.METRICS):
            ckpt.append_metrics(d, record)
        if self.writer is not None:
            for k, v in record.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, epoch)
        meta = {"method": cfg.method, "epoch": epoch, "data": cfg.data.name,
                "val_clean": record.get("val_clean"), "val_robust": record.get("val_robust")}
        with self._writing(d / "last.safetensors"):
            save_model(self.model, d / "last", meta=meta)
        if improved:
            with self._writing(d / "best.safetensors"):
                save_model(self.model, d / "best", meta=meta)
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch, "epochs": cfg.epochs, "method": self.method.state_dict(),
            "rng": rngs, "config": to_dict(cfg), "git": self.git, "best": dict(self.best),
        }
        with self._writing(d / ckpt.LAST):
            ckpt.save_checkpoint(d / ckpt.LAST, ckpt.to_cpu(state))
        self.committed = epoch

    def _summary(self, epochs_done: int) -> dict:
        d = self.run_dir
        return {"run_dir": str(d), "epochs": epochs_done, "best_epoch": self.best["epoch"],
                "best_val_robust": self.best["val_robust"], "best_val_clean": self.best["val_clean"],
                "checkpoint": str(d / ckpt.LAST), "best": str(d / "best.safetensors"),
                "last": str(d / "last.safetensors"), "metrics": str(d / ckpt.METRICS)}


# ---- helpers ------------------------------------------------------------------------------------
def _epoch_line(r: dict, epochs: int) -> str:
    val = f" val clean {r['val_clean']:.4f} robust {r['val_robust']:.4f}" if "val_clean" in r else ""
    return (f"epoch {r['epoch']}/{epochs} lr {r['lr']:.4g} loss {r['train_loss']:.4f}{val} "
            f"({r['time']:.1f} s, {r['images_per_s']:.0f} img/s)")
