"""TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')), x' from KL-PGD."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from darht.attacks.trades import trades_pgd
from darht.constraints import at_least
from darht.methods.args import TradesPGDArgs, arg
from darht.methods.base import Method, OriginalSchedule
from darht.methods.losses import trades_loss
from darht.registry import METHODS


@METHODS.register("trades")
class TRADES(Method):
    """Args: eps, alpha, steps (of the KL-PGD inner attack), beta (weight of the KL term)."""

    @dataclass(frozen=True)
    class Args(TradesPGDArgs):
        beta: float = arg(6.0, at_least(0))

    name = "trades"
    # 76 epochs, lr x0.1 from (1-based) epoch 75.
    original_schedule = OriginalSchedule(
        epochs=76, lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128,
        milestones=(74,), lr_factors=(0.1,),
        source="Zhang et al. 2019, TRADES train_trades_cifar10.py (WRN-34-10, beta 6)")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.args
        x_adv = self.perturb(trades_pgd, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps)
        # Two forward passes, not one on cat([x, x']): BatchNorm must not mix clean and adversarial statistics.
        return trades_loss(self.model(x), self.model(x_adv), y, a.beta)
