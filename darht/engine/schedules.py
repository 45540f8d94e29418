"""Learning-rate schedules: the lr is a pure function of (epoch, iteration) and the config.

Because the lr never depends on a running state, a resumed run needs nothing but the epoch to
reproduce it; `LRSchedule.state_dict()` is stored for the record only.

When the lr changes:
- `constant`, `multistep`, `cosine`: once per epoch (the value at the start of the epoch holds
  for all its iterations), as in the original adversarial-training code bases.
- warm-up (`warmup-multistep`, or any schedule with `optim.warmup_epochs > 0`): per iteration,
  linearly, so that the lr reaches its base value at the end of epoch `warmup_epochs` (the
  paper's Tiny ImageNet schedule: 0.1 at epoch 20, then x0.1 at 60 and 80). The first
  iteration already has a small positive lr (base / warm-up iterations), never 0.

`original`: the method class's `original_schedule` (its paper's lr steps, stretched to the run's
length; darht.methods.base.OriginalSchedule), per epoch; for methods that have one.

Milestones are fractions of the run's length when all are <= 1 (e.g. [0.5, 0.75]), otherwise
absolute epochs (e.g. [60, 80]). The lr is multiplied by `gamma` from the first epoch index
(0-based) `e` with `e >= milestone` on, like torch's MultiStepLR.
"""

from __future__ import annotations

import math

import torch

from darht.config import OptimConfig
from darht.errors import DarhtError
from darht.methods.base import OriginalSchedule

SCHEDULES = ("constant", "multistep", "cosine", "warmup-multistep", "original")


def milestone_epochs(milestones: list[float], epochs: int) -> list[float]:
    """Milestones in (possibly fractional) epochs: fractions of `epochs` when all are <= 1."""
    if milestones and all(0 <= m <= 1 for m in milestones):
        return [m * epochs for m in milestones]
    return [float(m) for m in milestones]


def lr_factor(cfg: OptimConfig, epoch: int, epochs: int, it: int = 0, iters: int = 1,
              original: OriginalSchedule | None = None) -> float:
    """lr / base lr at iteration `it` (of `iters`) of 0-based `epoch` in a run of `epochs`;
    `original` is the method's `original_schedule` (needed for schedule 'original')."""
    if cfg.schedule not in SCHEDULES:
        raise DarhtError(f"unknown lr schedule '{cfg.schedule}'; choose from: {', '.join(SCHEDULES)}")
    if cfg.schedule == "original":
        if not original:
            raise DarhtError("lr schedule 'original' needs a method with an original_schedule "
                             "(the teacher-training methods)")
        factor = original.lr_factor(epoch, epochs)
    elif cfg.schedule == "constant":
        factor = 1.0
    elif cfg.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    else:  # multistep, warmup-multistep
        passed = sum(1 for m in milestone_epochs(cfg.milestones, epochs) if epoch >= m)
        factor = cfg.gamma ** passed
    warm = cfg.warmup_epochs
    if warm > 0 and epoch < warm:
        done = epoch * iters + it + 1          # iterations finished after this one
        factor *= min(1.0, done / (warm * iters))
    return factor


class LRSchedule:
    """Sets the optimizer's lr for each iteration: `base_lr * lr_factor(...)`."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, iters: int,
                 original: OriginalSchedule | None = None):
        if cfg.schedule == "warmup-multistep" and cfg.warmup_epochs <= 0:
            raise DarhtError("lr schedule 'warmup-multistep' needs optim.warmup_epochs > 0")
        if cfg.warmup_epochs < 0:
            raise DarhtError(f"optim.warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
        self.optimizer, self.cfg, self.epochs, self.iters = optimizer, cfg, epochs, max(iters, 1)
        self.original = original
        self.factor(0)  # validates the schedule early
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, base in zip(optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = base

    def factor(self, epoch: int, it: int = 0) -> float:
        return lr_factor(self.cfg, epoch, self.epochs, it, self.iters, self.original)

    def set(self, epoch: int, it: int = 0) -> float:
        """Set every param group's lr for this iteration; returns the factor."""
        f = self.factor(epoch, it)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f
        return f

    def state_dict(self) -> dict:
        return {"schedule": self.cfg.schedule, "base_lrs": list(self.base_lrs), "epochs": self.epochs,
                "iters": self.iters}

    def load_state_dict(self, state: dict) -> None:
        # The lr is recomputed from (epoch, it); only the base lrs carry over.
        self.base_lrs = list(state.get("base_lrs", self.base_lrs))
