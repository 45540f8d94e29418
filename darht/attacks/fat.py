"""FAT's early-stopped PGD ("friendly" adversarial data, Zhang et al. 2020).

Per example a budget tau: before every step the current iterate is classified; an example that
is misclassified spends one unit of budget to take the step, and one whose budget is already 0
stops there for good. tau = 0 returns an example at the first iterate that fools the model;
tau >= steps never stops anyone, i.e. plain PGD. Each step also adds omega * N(0, I).

The stopping rule is a mask (torch.where), so no step needs the host to know who stopped. Where the
host reads device values for free (CPU: kernels run synchronously), stopped examples also leave
the working set, so each step costs a forward + input backward on the still-active examples only
(`compact`); on an accelerator they ride along frozen by the mask, and a step never waits for the
device. Both give the same result: the noise is drawn for the whole batch every step, and an
example's row of it is used whichever way it is computed.
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
            target_probs: torch.Tensor | None = None, compact: bool | None = None) -> torch.Tensor:
    """Early-stopped PGD; loss "ce" (FAT) or "kl" to softmax f(x) (FAT-TRADES: start normal, omega 0).

    compact: drop stopped examples from the working set (one host read per step); None = on CPU
    only (see the module docstring). The result does not depend on it.
    """
    check_inputs(x, y, eps, steps)
    if y is None:
        raise DarhtError("fat-pgd needs labels y: early stopping checks misclassification")
    if tau < 0:
        raise DarhtError(f"tau must be >= 0, got {tau}")
    if loss not in ("ce", "kl"):
        raise DarhtError(f"unknown fat-pgd loss '{loss}'; choose from: ce, kl")
    if compact is None:
        compact = x.device.type == "cpu"
    with eval_mode(model):
        if loss == "kl" and target_probs is None:
            target_probs = clean_probs(model, x)
        x_adv = random_start(x, eps, start, sigma)
        # The working set (all examples until one stops and `compact` drops it): rows `work` of
        # the batch (None = all), their iterates, clean points, labels, targets, budgets, states.
        work: torch.Tensor | None = None
        xw, x0, yw, tw = x_adv, x, y, target_probs
        budget = torch.full_like(y, tau)
        active = torch.ones_like(y, dtype=torch.bool)
        for _ in range(steps):
            # one forward gives both the misclassification check and the gradient (as in FAT)
            logits, g = logits_and_input_grad(model, xw, make_loss(loss, yw, target_probs=tw))
            wrong = logits.argmax(1) != yw
            stop = active & wrong & (budget == 0)   # stops here for good, before this step
            go = active & ~stop                     # takes this step
            budget = budget - (go & wrong).long()   # a misclassified example pays for its step
            active = go
            step = alpha * g.sign()
            if omega > 0:  # drawn for the whole batch: the same noise per example either way
                noise = torch.randn_like(x)
                step = step + omega * (noise if work is None else noise[work])
            xw = torch.where(go.view(-1, *([1] * (x.dim() - 1))), project_linf(xw + step, x0, eps), xw)
            if compact and bool(stop.any()):  # host read: free on CPU
                rows = torch.arange(len(x), device=x.device) if work is None else work
                x_adv = x_adv.index_copy(0, rows[stop], xw[stop])  # the stopped keep their iterate
                keep = go.nonzero().squeeze(1)
                work, xw, x0, yw = rows[keep], xw[keep], x0[keep], yw[keep]
                tw = None if tw is None else tw[keep]
                budget, active = budget[keep], active[keep]
                if work.numel() == 0:
                    return x_adv
    if work is None:
        return xw.detach()
    return x_adv.index_copy(0, work, xw).detach()
