"""Friendly adversarial training (Zhang et al. 2020): train on early-stopped PGD examples.

Early-stopped PGD gives each example a budget tau: once it is misclassified it may take only tau
more steps (tau = 0: stop at the first misclassified iterate; tau >= K: plain PGD). tau grows
during training ("dynamic tau"), from the paper's schedule stretched to the run's length.

`tau` / `tau_schedule` / `scale_schedule` (both methods):
    tau=None, tau_schedule="dynamic"  the paper's schedule (FAT: 0/1/2 over 120 epochs; FAT-TRADES:
                                      0/1/2/3 over 85), scaled to the run by default
    tau_schedule=[[until, tau], ...]  a custom schedule: tau while the 1-based epoch <= until
                                      (see darht.methods.schedules); units are the last until's
    scale_schedule=False              read the boundaries as absolute epochs instead
    tau=k                             fixed tau = k for the whole run (overrides the schedule)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks.fat import fat_pgd
from darht.errors import DarhtError
from darht.methods._args import check_args, check_no_teachers, flag, number
from darht.methods.base import Method
from darht.methods.pgd_at import adversarial
from darht.methods.schedules import FAT_TAU, FAT_TRADES_TAU, StepSchedule, parse_step_schedule
from darht.methods.standard import accuracy
from darht.methods.trades import trades_loss
from darht.registry import METHODS


class _EarlyStopped(Method):
    """What FAT and FAT-TRADES share: attack arguments and the tau schedule."""

    paper_tau: tuple = ()

    def _setup(self, eps: Any, alpha: Any, steps: Any, omega: Any, tau: Any, tau_schedule: Any,
               scale_schedule: Any) -> None:
        self.eps = number(self, "eps", eps)
        self.alpha = number(self, "alpha", alpha)
        self.steps = number(self, "steps", steps, integer=True)
        self.omega = number(self, "omega", omega)
        self.fixed_tau = number(self, "tau", tau, integer=True, allow_none=True)
        if self.fixed_tau is not None and tau_schedule != "dynamic":
            raise DarhtError(f"method '{self.name}': give either a fixed tau or a tau_schedule, not both")
        self.schedule: StepSchedule = parse_step_schedule(
            self.name, "tau_schedule", tau_schedule, self.paper_tau, flag(self, "scale_schedule", scale_schedule))

    @property
    def tau(self) -> int:
        """The early-stopping budget for the current epoch (set by start_epoch)."""
        if self.fixed_tau is not None:
            return self.fixed_tau
        return self.schedule(self.epoch, self.epochs)

    def _tau_part(self, x: torch.Tensor, tau: int) -> torch.Tensor:
        return torch.tensor(float(tau), device=x.device)


@METHODS.register("fat")
class FAT(_EarlyStopped):
    """Args: eps, alpha, steps (K), omega (noise added per step), tau, tau_schedule, scale_schedule."""

    name = "fat"
    paper_tau = FAT_TAU
    # 120 epochs, lr x0.1 / x0.01 / x0.005 of the base from (1-based) epochs 60 / 90 / 110.
    # Format: darht.methods.schedules.
    original_schedule = {
        "epochs": 120, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
        "milestones": [59, 89, 109], "lr_factors": [0.1, 0.01, 0.005],
        "source": "Zhang et al. 2020, Friendly-Adversarial-Training FAT.py",
    }

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, *,
                 eps: float = 0.031, alpha: float = 0.007, steps: int = 10, omega: float = 0.001,
                 tau: int | None = None, tau_schedule: str | list = "dynamic", scale_schedule: bool = True,
                 **unknown):
        check_args(self, unknown)
        check_no_teachers(self, teachers)
        super().__init__(model, teachers)
        self._setup(eps, alpha, steps, omega, tau, tau_schedule, scale_schedule)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        tau = self.tau
        x_adv = adversarial(self.model, fat_pgd, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                            tau=tau, omega=self.omega, loss="ce", start="uniform")
        logits = self.model(x_adv)
        ce = F.cross_entropy(logits, y)
        return {"loss": ce, "ce": ce.detach(), "adv_acc": accuracy(logits, y), "tau": self._tau_part(x, tau)}


@METHODS.register("fat-trades")
class FATTRADES(_EarlyStopped):
    """FAT for TRADES: early-stopped KL-PGD (start x + 0.001 N(0, I)), then the TRADES loss.

    Args: eps, alpha, steps, omega (0 as in the original), beta, tau, tau_schedule, scale_schedule.
    """

    name = "fat-trades"
    paper_tau = FAT_TRADES_TAU
    # 85 epochs, lr x0.1 from (1-based) epoch 75 (its x0.01 at 90 is never reached).
    # Format: darht.methods.schedules.
    original_schedule = {
        "epochs": 85, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
        "milestones": [74], "lr_factors": [0.1],
        "source": "Zhang et al. 2020, Friendly-Adversarial-Training FAT_for_TRADES.py",
    }

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, *,
                 eps: float = 0.031, alpha: float = 0.007, steps: int = 10, omega: float = 0.0,
                 beta: float = 6.0, tau: int | None = None, tau_schedule: str | list = "dynamic",
                 scale_schedule: bool = True, **unknown):
        check_args(self, unknown)
        check_no_teachers(self, teachers)
        super().__init__(model, teachers)
        self._setup(eps, alpha, steps, omega, tau, tau_schedule, scale_schedule)
        self.beta = number(self, "beta", beta)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        tau = self.tau
        # target_probs=None: the attack uses softmax f(x) of the model in eval mode, detached.
        x_adv = adversarial(self.model, fat_pgd, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                            tau=tau, omega=self.omega, loss="kl", start="normal", sigma=0.001)
        out = trades_loss(self.model(x), self.model(x_adv), y, self.beta)
        out["tau"] = self._tau_part(x, tau)
        return out
