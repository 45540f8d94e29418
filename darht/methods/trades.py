"""TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')), x' from KL-PGD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks.trades import trades_pgd
from darht.methods._args import check_args, check_no_teachers, number
from darht.methods.base import Method
from darht.methods.pgd_at import adversarial
from darht.methods.standard import accuracy
from darht.registry import METHODS


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                beta: float) -> dict[str, torch.Tensor]:
    """CE_mean(f(x), y) + beta * (1/B) sum_i KL(p_i || q_i), p = softmax f(x), q = softmax f(x').

    Gradient flows through both p and q (the clean branch is not detached), as in TRADES' code.
    """
    ce = F.cross_entropy(logits_nat, y)
    log_p = F.log_softmax(logits_nat, dim=1)  # [B, C]
    log_q = F.log_softmax(logits_adv, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    return {"loss": ce + beta * kl, "ce": ce.detach(), "kl": kl.detach(), "adv_acc": accuracy(logits_adv, y)}


@METHODS.register("trades")
class TRADES(Method):
    """Args: eps, alpha, steps (of the KL-PGD inner attack), beta (weight of the KL term)."""

    name = "trades"
    # 76 epochs, lr x0.1 from (1-based) epoch 75. Format: darht.methods.schedules.
    original_schedule = {
        "epochs": 76, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
        "milestones": [74], "lr_factors": [0.1],
        "source": "Zhang et al. 2019, TRADES train_trades_cifar10.py (WRN-34-10, beta 6)",
    }

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, *,
                 eps: float = 0.031, alpha: float = 0.007, steps: int = 10, beta: float = 6.0, **unknown):
        check_args(self, unknown)
        check_no_teachers(self, teachers)
        super().__init__(model, teachers)
        self.eps = number(self, "eps", eps)
        self.alpha = number(self, "alpha", alpha)
        self.steps = number(self, "steps", steps, integer=True)
        self.beta = number(self, "beta", beta)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x_adv = adversarial(self.model, trades_pgd, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps)
        # Two forward passes, not one on cat([x, x']): BatchNorm must not mix clean and adversarial statistics.
        logits_nat = self.model(x)
        logits_adv = self.model(x_adv)
        return trades_loss(logits_nat, logits_adv, y, self.beta)
