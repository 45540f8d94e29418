"""PGD adversarial training (Madry et al. 2018): min_f CE(f(x'), y), x' = PGD-K on CE from a uniform start."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks.pgd import pgd
from darht.methods._args import check_args, check_no_teachers, number
from darht.methods.base import Method
from darht.methods.standard import accuracy
from darht.registry import METHODS


def adversarial(model: nn.Module, attack: Callable, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> torch.Tensor:
    """Run `attack(model, x, y, **kw)` and return a detached x'.

    Attacks promise to restore the model's mode; restoring it here too keeps a training step
    from silently running in eval mode (frozen BatchNorm statistics) if one ever does not.
    """
    # per submodule, so parts deliberately kept in eval mode inside a training model stay so
    modes = [(m, m.training) for m in model.modules()]
    try:
        x_adv = attack(model, x, y, **kw)
    finally:
        for m, training in modes:
            m.training = training
    return x_adv.detach()


@METHODS.register("pgd-at")
class PGDAT(Method):
    """Args: eps (L-inf radius, [0,1] pixels), alpha (step size), steps (K)."""

    name = "pgd-at"
    # Madry's CIFAR-10 config: 80k iterations at batch 128 (= 205 epochs of 50k images),
    # lr 0.1 -> 0.01 at 40k (epoch 102.4) -> 0.001 at 60k (epoch 153.6). Format: darht.methods.schedules.
    original_schedule = {
        "epochs": 205, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
        "milestones": [102, 154], "lr_factors": [0.1, 0.01],
        "source": "Madry et al. 2018, cifar10_challenge config (iterations converted to epochs)",
    }

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, *,
                 eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, **unknown):
        check_args(self, unknown)
        check_no_teachers(self, teachers)
        super().__init__(model, teachers)
        self.eps = number(self, "eps", eps)
        self.alpha = number(self, "alpha", alpha)
        self.steps = number(self, "steps", steps, integer=True)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x_adv = adversarial(self.model, pgd, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                            loss="ce", start="uniform")
        logits = self.model(x_adv)
        ce = F.cross_entropy(logits, y)
        return {"loss": ce, "ce": ce.detach(), "adv_acc": accuracy(logits, y)}
