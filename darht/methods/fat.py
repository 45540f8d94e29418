"""Friendly adversarial training (Zhang et al. 2020): train on early-stopped PGD examples.

Early-stopped PGD gives each example a budget tau: once it is misclassified it may take only tau
more steps (tau = 0: stop at the first misclassified iterate; tau >= K: plain PGD). tau grows
during training ("dynamic tau"), from the paper's schedule stretched to the run's length.

`tau` / `tau_schedule` / `scale_schedule` (both methods):
    tau=None, tau_schedule="dynamic"  the paper's schedule (FAT: 0/1/2 over 120 epochs; FAT-TRADES:
                                      0/1/2/3 over 85), scaled to the run by default
    tau_schedule=[[until, tau], ...]  a custom schedule: tau while the 1-based epoch <= until
                                      (see darht.methods.args.StepSchedule); units are the last until's
    scale_schedule=False              read the boundaries as absolute epochs instead
    tau=k                             fixed tau = k for the whole run (overrides the schedule)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks.fat import fat_pgd
from darht.constraints import at_least
from darht.methods.args import (FAT_TAU, FAT_TRADES_TAU, ArgError, StepSchedule, TradesPGDArgs, arg,
                               parse_step_schedule)
from darht.methods.base import Method, OriginalSchedule
from darht.methods.losses import accuracy, trades_loss
from darht.registry import METHODS


@dataclass(frozen=True)
class EarlyStoppedArgs(TradesPGDArgs):
    """FAT's arguments; `paper_tau` is the schedule "dynamic" means."""

    paper_tau: ClassVar[tuple] = FAT_TAU
    omega: float = arg(0.001, at_least(0))  # N(0, omega^2) noise added per step
    tau: int | None = arg(None, at_least(0))
    tau_schedule: str | list = "dynamic"
    scale_schedule: bool = True

    def __post_init__(self) -> None:
        if self.tau is not None and self.tau_schedule != "dynamic":
            raise ArgError("give either a fixed tau or a tau_schedule, not both")
        self.schedule()  # checks the schedule

    def schedule(self) -> StepSchedule:
        return parse_step_schedule("tau_schedule", self.tau_schedule, self.paper_tau, self.scale_schedule)


class _EarlyStopped(Method):
    """What FAT and FAT-TRADES share: the tau of the current epoch."""

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, **method_args):
        super().__init__(model, teachers, **method_args)
        self.schedule = self.args.schedule()

    @property
    def tau(self) -> int:
        """The early-stopping budget for the current epoch (set by start_epoch)."""
        if self.args.tau is not None:
            return self.args.tau
        return self.schedule(self.epoch, self.epochs)


@METHODS.register("fat")
class FAT(_EarlyStopped):
    """Args: eps, alpha, steps (K), omega (noise added per step), tau, tau_schedule, scale_schedule."""

    Args = EarlyStoppedArgs
    name = "fat"
    # 120 epochs, lr x0.1 / x0.01 / x0.005 of the base from (1-based) epochs 60 / 90 / 110.
    original_schedule = OriginalSchedule(
        epochs=120, lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128,
        milestones=(59, 89, 109), lr_factors=(0.1, 0.01, 0.005),
        source="Zhang et al. 2020, Friendly-Adversarial-Training FAT.py")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a, tau = self.args, self.tau
        x_adv = self.perturb(fat_pgd, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, tau=tau, omega=a.omega,
                             loss="ce", start="uniform")
        logits = self.model(x_adv)
        ce = F.cross_entropy(logits, y)
        return {"loss": ce, "ce": ce.detach(), "adv_acc": accuracy(logits, y),
                "tau": torch.tensor(float(tau), device=x.device)}


@METHODS.register("fat-trades")
class FATTRADES(_EarlyStopped):
    """FAT for TRADES: early-stopped KL-PGD (start x + 0.001 N(0, I)), then the TRADES loss.

    Args: eps, alpha, steps, omega (0 as in the original), beta, tau, tau_schedule, scale_schedule.
    """

    @dataclass(frozen=True)
    class Args(EarlyStoppedArgs):
        paper_tau: ClassVar[tuple] = FAT_TRADES_TAU
        omega: float = arg(0.0, at_least(0))
        beta: float = arg(6.0, at_least(0))

    name = "fat-trades"
    # 85 epochs, lr x0.1 from (1-based) epoch 75 (its x0.01 at 90 is never reached).
    original_schedule = OriginalSchedule(
        epochs=85, lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128,
        milestones=(74,), lr_factors=(0.1,),
        source="Zhang et al. 2020, Friendly-Adversarial-Training FAT_for_TRADES.py")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a, tau = self.args, self.tau
        # target_probs=None: the attack uses softmax f(x) of the model in eval mode, detached.
        x_adv = self.perturb(fat_pgd, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, tau=tau, omega=a.omega,
                             loss="kl", start="normal", sigma=0.001)
        out = trades_loss(self.model(x), self.model(x_adv), y, a.beta)
        out["tau"] = torch.tensor(float(tau), device=x.device)
        return out
