"""One training loop for teachers (adversarial training) and students (distillation) alike.

The method (darht.methods) turns a batch into losses; the trainer owns everything else: data,
optimizer and lr schedule, AMP, validation on a held-out split of train (never the test set),
the choice of the best epoch, and data-parallel runs under torchrun (the method trains through a
DistributedDataParallel wrapper, set up in darht.engine.setup). It never branches on the
method's name. What a run writes to `cfg.out` (records, weights, last.pt), in which order, and
how `--resume` continues a killed run to the very same weights and records, is
darht.engine.rundir's: the loop holds one RunDir and calls it at set-up and once per epoch.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm import tqdm

from darht.config import TrainConfig, check_run
from darht.engine import checkpoint as ckpt
from darht.engine import distributed as ddp
from darht.engine.lock import rank0_lock
from darht.engine.rundir import RunDir, Trainables, log
from darht.engine.schedules import LRSchedule
from darht.engine.setup import autocast_for, build_data, build_model, configure_backends
from darht.engine.validate import is_better, validate
from darht.errors import DarhtError
from darht.utils import resolve_device, seed_everything


def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    """Train `cfg.method` as configured; returns a summary (best epoch/metrics, paths).

    With `resume`, continue from `cfg.out`/last.pt (bit-identical to an uninterrupted run on CPU).
    Under torchrun (WORLD_SIZE > 1) every rank runs this; only rank 0 writes files and returns
    the summary (other ranks return {}, so a CLI prints it once).

    Only one process may write a run directory: rank 0 holds `cfg.out`/.lock for the whole run,
    and a second process is refused at once. Ctrl-C says which checkpoint is left, then re-raises.
    """
    check_run(cfg)  # also for a config built in Python: every value, the method, its teachers
    info, device = ddp.init_distributed(resolve_device(cfg.device))
    run = _Run(cfg, info, device)
    ok = False
    try:
        with rank0_lock(run.dir.path, info):
            summary = run.run(resume)
        ok = True
        return summary if info.is_main else {}
    except KeyboardInterrupt:
        log(f"interrupted: {run.dir.committed_text()}", info)
        raise
    finally:
        if ok:
            ddp.cleanup(info)
        elif info.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # no barrier: other ranks may be gone


class _Run:
    """One run: set up top to bottom in `_run`, then one `_epoch` per epoch; `self.dir` is the run
    directory (resume, records, checkpoints)."""

    def __init__(self, cfg: TrainConfig, info: ddp.DistInfo, device: torch.device):
        self.cfg, self.info, self.device = cfg, info, device
        self.dir = RunDir(cfg, info)

    # ---- set-up ----------------------------------------------------------------------------------
    def run(self, resume: bool) -> dict:
        try:
            return self._run(resume)
        finally:
            self.dir.close()

    def _run(self, resume: bool) -> dict:
        cfg, info = self.cfg, self.info
        state = self.dir.open(resume)  # a changed config is refused here, before any data is loaded
        if state is not None and state["epoch"] >= cfg.epochs:
            log(f"run {self.dir.path} already finished ({state['epoch']} of {cfg.epochs} epochs)", info)
            self.dir.best = state.get("best", self.dir.best)
            return self.dir.summary(state["epoch"])
        seed_everything(cfg.seed)
        configure_backends(cfg, self.device)
        self._setup_data()
        self._setup_model()
        start = 0 if state is None else self.dir.restore(state, self.trainables)
        if info.enabled:
            ddp.broadcast_module(self.model)
        self.dir.restore_rng(state)
        self.dir.prepare(fresh=state is None)
        for epoch in range(start, cfg.epochs):
            self._epoch(epoch)
        ddp.barrier(info)
        return self.dir.summary(cfg.epochs)

    def _setup_data(self) -> None:
        self.data, self.val, self.loader = build_data(self.cfg, self.info, self.device)

    def _setup_model(self) -> None:
        cfg, device = self.cfg, self.device
        # model: the plain module (saved); net: what validation and the inner attacks call (compiled
        # when asked); the method trains through its own `model` (a DDP wrapper with several ranks)
        self.model, self.net, self.method = build_model(cfg, self.data, device, self.info)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov)
        self.schedule = LRSchedule(self.optimizer, cfg.optim, cfg.epochs, len(self.loader),
                                   getattr(type(self.method), "original_schedule", None))
        self.autocast = autocast_for(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
        self.trainables = Trainables(self.model, self.optimizer, self.schedule, self.scaler, self.method)

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
            self.dir.save(epoch + 1, record, improved, rngs, self.trainables)
        log(_epoch_line(record, cfg.epochs), info)

    def _train_epoch(self, epoch: int) -> dict:
        cfg, info, model = self.cfg, self.info, self.model
        self.loader.set_epoch(epoch)
        self.net.train()  # what validation/attacks call (a compiled wrapper's flag must follow too)
        self.method.model.train()  # what the method trains through (a DDP wrapper, maybe compiled)
        params = [p for p in model.parameters() if p.requires_grad]
        sums = _EpochSums(self.device)
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
            sums.add(out, y.shape[0])
            bar.update(1)
            if not bar.disable and (it + 1) % every == 0:
                seen = sums.count * info.world_size
                bar.set_postfix(loss=f"{sums.mean('loss'):.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.close()
        local = sums.totals()
        keys = sorted(local)  # every rank has the same keys: same method, same code path
        totals = ddp.all_reduce_floats([local[k] for k in keys] + [float(sums.count)], info)
        n_total = totals[-1]
        means = {f"train_{k}": (v / n_total if n_total else math.nan) for k, v in zip(keys, totals)}
        if not math.isfinite(means.get("train_loss", 0.0)):  # checked once per epoch: no extra syncs
            raise DarhtError(f"training diverged: mean loss {means['train_loss']} in epoch {epoch + 1} "
                             "(try a lower optim.lr, optim.grad_clip, or amp: none); last.pt keeps the "
                             "previous epoch")
        return {**means, "train_examples": int(n_total)}

    def _step(self, loss: torch.Tensor, params: list[nn.Parameter]) -> None:
        scaler = self.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()  # DDP averages the gradients
        if self.cfg.optim.grad_clip:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()

    # ---- validation, best ----------------------------------------------------------------------
    def _validate(self) -> dict:
        cfg, info = self.cfg, self.info
        n = min(cfg.eval.n, len(self.val))
        if n == 0:
            return {}
        idx = torch.arange(info.rank, n, info.world_size)  # each rank validates its share
        part = self.val.subset(idx)
        # no autocast: validation attacks and verdicts run in fp32 (they choose the best checkpoint)
        counts = validate(self.net, part.x, part.y, cfg.eval.attack, eps=cfg.eval.eps,
                          steps=cfg.eval.steps, batch_size=cfg.batch_size, device=self.device,
                          eot=cfg.eval.eot, draws=cfg.eval.draws)
        clean, robust, total = ddp.all_reduce_floats(list(counts), info)
        return {"val_clean": clean / total, "val_robust": robust / total, "val_examples": int(total)}

    def _update_best(self, epoch: int, val: dict) -> bool:
        """Without any validation yet, the latest epoch stands in (so `best` always exists)."""
        if not val:
            if self.dir.best["val_robust"] is None:
                self.dir.best = {"epoch": epoch, "val_robust": None, "val_clean": None}
                return True
            return False
        if is_better(val, self.dir.best, getattr(self.method, "select_by", "robust")):
            self.dir.best = {"epoch": epoch, "val_robust": val["val_robust"], "val_clean": val["val_clean"]}
            return True
        return False


# ---- helpers ------------------------------------------------------------------------------------
class _EpochSums:
    """Example-weighted sums of the method's loss parts over an epoch.

    Each step's parts stay on the device as one float32 vector (no sync, no float64: MPS has
    none; every `COMPACT` steps they are stacked into one tensor there, still without a sync);
    they are copied to the host and summed in float64 only when the progress bar asks and at the
    end of the epoch, so the epoch means are as accurate as a float64 running sum."""

    COMPACT = 256

    def __init__(self, device: torch.device):
        self.device = device
        self.count = 0                     # examples so far (host)
        self._sums: dict[str, float] = {}  # copied-out sums (host, float64)
        self._steps: list[tuple[tuple[str, ...], torch.Tensor, int]] = []           # (keys, [K], n)
        self._chunks: list[tuple[tuple[str, ...], torch.Tensor, list[int]]] = []   # (keys, [S, K], ns)

    def add(self, out: dict[str, torch.Tensor], n: int) -> None:
        # .to(): a part may be a CPU scalar (e.g. a python-side weight) next to device tensors
        parts = torch.stack([v.detach().to(self.device, torch.float32).reshape(()) for v in out.values()])
        self._steps.append((tuple(out), parts, n))
        self.count += n
        if len(self._steps) >= self.COMPACT:
            self._compact()

    def _compact(self) -> None:
        steps, self._steps = self._steps, []
        i = 0
        while i < len(steps):  # runs of steps with the same parts: one tensor each
            keys, j = steps[i][0], i
            while j < len(steps) and steps[j][0] == keys:
                j += 1
            self._chunks.append((keys, torch.stack([t for _, t, _ in steps[i:j]]), [n for *_, n in steps[i:j]]))
            i = j

    def _flush(self) -> None:
        self._compact()
        chunks, self._chunks = self._chunks, []
        for keys, vals, ns in chunks:
            w = torch.tensor(ns, dtype=torch.float64)[:, None]                    # [S, 1]
            for k, v in zip(keys, (vals.cpu().double() * w).sum(0).tolist()):  # one copy per chunk
                self._sums[k] = self._sums.get(k, 0.0) + v

    def totals(self) -> dict[str, float]:
        self._flush()
        return dict(self._sums)

    def mean(self, key: str) -> float:
        self._flush()
        return self._sums.get(key, math.nan) / max(self.count, 1)


def _epoch_line(r: dict, epochs: int) -> str:
    val = f" val clean {r['val_clean']:.4f} robust {r['val_robust']:.4f}" if "val_clean" in r else ""
    return (f"epoch {r['epoch']}/{epochs} lr {r['lr']:.4g} loss {r['train_loss']:.4f}{val} "
            f"({r['time']:.1f} s, {r['images_per_s']:.0f} img/s)")
