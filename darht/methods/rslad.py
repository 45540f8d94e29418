"""RSLAD, robust soft label adversarial distillation (Zi et al., 2021).

Robust soft labels t = softmax(T(x)) on the CLEAN x (temperature 1, no grad).
x' = x + 0.001 N(0, I), then sign-steps maximising KL(t || softmax S(x')) against the student
(eps 8/255, step 2/255, 10 steps); loss = 5/6 KL(t || S(x')) + 1/6 KL(t || S(x)),
each summed over classes and averaged over examples (as the original's sum / batch size).
Several teachers (an extension; RSLAD uses one): t is the mean of the teachers' probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from darht.attacks.pgd import pgd
from darht.constraints import between
from darht.methods.args import PGDArgs, arg
from darht.methods.base import Method, OriginalSchedule
from darht.methods.losses import kl_probs, log_probs, soft_labels
from darht.registry import METHODS


@METHODS.register("rslad")
class RSLAD(Method):
    @dataclass(frozen=True)
    class Args(PGDArgs):
        adv_weight: float = arg(5 / 6, between(0, 1))  # weight of KL(t || S(x'))

    name = "rslad"
    needs_teachers = True
    # RSLAD's CIFAR recipe.
    original_schedule = OriginalSchedule(
        epochs=300, lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128,
        milestones=(215, 260, 285), lr_factors=(0.1, 0.01, 0.001),
        source="Zi et al. 2021, RSLAD (lr x0.1 at epochs 215, 260, 285 of 300)")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.args
        target = soft_labels(self.teachers, x)                                        # [N,K]
        x_adv = self.perturb(pgd, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, loss="kl", target_probs=target,
                             start="normal", sigma=0.001)
        kl_adv = kl_probs(target, log_probs(self.model(x_adv))).mean()
        kl_nat = kl_probs(target, log_probs(self.model(x))).mean()
        loss = a.adv_weight * kl_adv + (1 - a.adv_weight) * kl_nat
        return {"loss": loss, "kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach()}
