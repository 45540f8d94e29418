"""RSLAD, robust soft label adversarial distillation (Zi et al., 2021).

Robust soft labels t = softmax(T(x)) on the CLEAN x (temperature 1, no grad).
x' = x + 0.001 N(0, I), then sign-steps maximising KL(t || softmax S(x')) against the student
(eps 8/255, step 2/255, 10 steps); loss = 5/6 KL(t || S(x')) + 1/6 KL(t || S(x)),
each summed over classes and averaged over examples (as the original's sum / batch size).
Several teachers (an extension; RSLAD uses one): t is the mean of the teachers' probabilities.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks.pgd import pgd
from darht.methods.base import Method
from darht.methods._args import check_args, number
from darht.methods.kd import fraction, kl_probs, require_teachers, soft_labels, unwrap
from darht.registry import METHODS


@METHODS.register("rslad")
class RSLAD(Method):
    name = "rslad"
    needs_teachers = True
    # RSLAD's CIFAR recipe (format: darht.methods.schedules).
    original_schedule = {
        "epochs": 300, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
        "milestones": [215, 260, 285], "lr_factors": [0.1, 0.01, 0.001],
        "source": "Zi et al. 2021, RSLAD (lr x0.1 at epochs 215, 260, 285 of 300)",
    }

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, *,
                 eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 adv_weight: float = 5 / 6, **unknown: Any):
        check_args(self, unknown)
        super().__init__(model, teachers)
        require_teachers(self.name, self.teachers)
        self.eps, self.alpha = number(self, "eps", eps), number(self, "alpha", alpha)
        self.steps = number(self, "steps", steps, integer=True)
        self.adv_weight = fraction(self, "adv_weight", adv_weight)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        target = soft_labels(self.teachers, x)                                        # [N,K]
        x_adv = pgd(unwrap(self.model), x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                    loss="kl", target_probs=target, start="normal", sigma=0.001)
        kl_adv = kl_probs(target, F.log_softmax(self.model(x_adv), dim=-1)).mean()
        kl_nat = kl_probs(target, F.log_softmax(self.model(x), dim=-1)).mean()
        loss = self.adv_weight * kl_adv + (1 - self.adv_weight) * kl_nat
        return {"loss": loss, "kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach()}
