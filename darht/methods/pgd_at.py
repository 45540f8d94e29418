"""PGD adversarial training (Madry et al. 2018): min_f CE(f(x'), y), x' = PGD-K on CE from a uniform start."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from darht.attacks.pgd import pgd
from darht.methods.args import PGDArgs
from darht.methods.base import Method, OriginalSchedule
from darht.methods.losses import accuracy
from darht.registry import METHODS


@METHODS.register("pgd-at")
class PGDAT(Method):
    """Args: eps (L-inf radius, [0,1] pixels), alpha (step size), steps (K)."""

    Args = PGDArgs
    name = "pgd-at"
    # Madry's CIFAR-10 config: 80k iterations at batch 128 (= 205 epochs of 50k images),
    # lr 0.1 -> 0.01 at 40k (epoch 102.4) -> 0.001 at 60k (epoch 153.6).
    original_schedule = OriginalSchedule(
        epochs=205, lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128,
        milestones=(102, 154), lr_factors=(0.1, 0.01),
        source="Madry et al. 2018, cifar10_challenge config (iterations converted to epochs)")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.args
        x_adv = self.perturb(pgd, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, loss="ce", start="uniform")
        logits = self.model(x_adv)
        ce = F.cross_entropy(logits, y)
        return {"loss": ce, "ce": ce.detach(), "adv_acc": accuracy(logits, y)}
