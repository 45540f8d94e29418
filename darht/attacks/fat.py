"""FAT's early-stopped PGD ("friendly" adversarial data, Zhang et al. 2020).

Per example a budget tau: before every step the current iterate is classified; an example that
is misclassified spends one unit of budget to take the step, and one whose budget is already 0
stops there for good. tau = 0 returns an example at the first iterate that fools the model;
tau >= steps never stops anyone, i.e. plain PGD. Each step also adds omega * N(0, I).
"""

from __future__ import annotations

import torch
from torch import nn

from darht.attacks.core import (check_inputs, clean_probs, eval_mode, logits_and_input_grad,
                                project_linf, random_start)
from darht.attacks.pgd import make_loss
from darht.errors import DarhtError
from darht.registry import ATTACKS


@ATTACKS.register("fat-pgd", steps="steps", white_box=True, paper_defaults={},
                  training={"eps": 0.031, "alpha": 0.007, "start": "uniform", "omega": 0.001})  # FAT.py
def fat_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
            alpha: float = 2 / 255, steps: int = 10, tau: int = 0, omega: float = 0.001,
            loss: str = "ce", start: str = "uniform", sigma: float = 0.001,
            target_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Early-stopped PGD; loss "ce" (FAT) or "kl" to softmax f(x) (FAT-TRADES: start normal, omega 0)."""
    check_inputs(x, y, eps, steps)
    if y is None:
        raise DarhtError("fat-pgd needs labels y: early stopping checks misclassification")
    if tau < 0:
        raise DarhtError(f"tau must be >= 0, got {tau}")
    if loss not in ("ce", "kl"):
        raise DarhtError(f"unknown fat-pgd loss '{loss}'; choose from: ce, kl")
    with eval_mode(model):
        if loss == "kl" and target_probs is None:
            target_probs = clean_probs(model, x)
        x_adv = random_start(x, eps, start, sigma)
        budget = torch.full_like(y, tau)
        active = torch.ones_like(y, dtype=torch.bool)
        for _ in range(steps):
            idx = active.nonzero().squeeze(1)  # examples still iterating
            if idx.numel() == 0:
                break
            sub_target = None if target_probs is None else target_probs[idx]
            loss_fn = make_loss(loss, y[idx], target_probs=sub_target)
            # one forward gives both the misclassification check and the gradient (as in FAT)
            logits, g = logits_and_input_grad(model, x_adv[idx], loss_fn)
            wrong = logits.argmax(1) != y[idx]
            stop = wrong & (budget[idx] == 0)
            budget[idx] -= (wrong & ~stop).long()
            active[idx[stop]] = False
            go = idx[~stop]
            step = alpha * g[~stop].sign()
            if omega > 0:
                step = step + omega * torch.randn_like(step)
            x_adv[go] = project_linf(x_adv[go] + step, x[go], eps).detach()
    return x_adv
