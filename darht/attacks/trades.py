"""TRADES' inner maximisation (Zhang et al. 2019): KL-PGD from x + 0.001 N(0, I)."""

from __future__ import annotations

import torch
from torch import nn

from darht.attacks.pgd import pgd
from darht.registry import ATTACKS


@ATTACKS.register("trades-pgd", steps="steps", white_box=True, paper_defaults={},
                  training={"eps": 0.031, "alpha": 0.007})  # train_trades_cifar10.py
def trades_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *,
               eps: float = 0.031, alpha: float = 0.007, steps: int = 10,
               sigma: float = 0.001) -> torch.Tensor:
    """Maximise sum_i KL(softmax f(x_i) || softmax f(x'_i)); the clean target has no grad, y unused."""
    return pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, loss="kl", start="normal",
               sigma=sigma)
