"""PGD stopped per example by the First-Order Stationary Condition (FOSC), the inner maximisation
of Dynamic Adversarial Training (Wang, Ma, Bailey, Yi, Zhou, Gu, ICML 2019, "On the Convergence
and Robustness of Adversarial Training", sec. 3-4; released code YisenWang/dynamic_adv_training,
pgd_attack.py).

For the L-inf ball X = {x' : ||x' - x||_inf <= eps} around the clean x, the FOSC of an iterate
x^k is

    c(x^k) = max_{x' in X} <x' - x^k, g> = eps * ||g||_1 - <x^k - x, g>,   g = grad_x l(f(x^k), y),

per example (l = cross-entropy of that example, gradients in [0, 1] pixel units). c >= 0, and
c = 0 exactly at a stationary point of the constrained maximisation; the [0, 1] image box is
not part of X (as in the paper and the released code).

The attack takes sign-steps x^{k+1} = clip_[0,1](clip_{x +- eps}(x^k + alpha * sign(g))) from a
random start, and after every step checks the new iterate: an example with c(x^k) <= threshold
stops there for good (a stopped example does not move, so its FOSC would not change either).
The first step is always taken, as in the released code (its loop checks after each step).
threshold = 0 stops only exact stationary points (so it is PGD in practice); a huge threshold
stops every example after its first step.

The gradient that checks the condition at x^k is the one that takes the next step, so K steps
cost K forward/backward passes. The stop is a mask (torch.where): no step needs the host to know
who stopped. On CPU, where reading a device value is free, stopped examples also leave the
working set (`compact`, as in darht.attacks.fat); the result is the same either way.
"""

from __future__ import annotations

import torch
from torch import nn

from darht.attacks.core import ce_loss, check_inputs, eval_mode, input_grad, project_linf, random_start
from darht.errors import DarhtError
from darht.registry import ATTACKS


def fosc(x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, eps: float) -> torch.Tensor:
    """c = eps * ||grad||_1 - <x_adv - x, grad> per example: [B] from [B, ...] tensors."""
    g = grad.flatten(1).float()
    delta = (x_adv - x).flatten(1).float()
    return eps * g.abs().sum(1) - (delta * g).sum(1)


@ATTACKS.register("fosc-pgd", steps="steps", white_box=True, paper_defaults={},
                  training={"eps": 0.031, "alpha": 0.031 / 4, "start": "uniform"})  # DAT train_models.py
def fosc_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 0.031,
             alpha: float = 0.031 / 4, steps: int = 10, threshold: float = 0.0, start: str = "uniform",
             sigma: float = 0.001, compact: bool | None = None) -> torch.Tensor:
    """CE sign-steps from `start`, each example stopping once its FOSC is <= `threshold` (c_t).

    compact: drop stopped examples from the working set (one host read per step); None = on CPU
    only. The result does not depend on it.
    """
    check_inputs(x, y, eps, steps)
    if y is None:
        raise DarhtError("fosc-pgd needs labels y: its loss is the cross-entropy")
    if not threshold >= 0:  # also refuses NaN
        raise DarhtError(f"threshold must be >= 0, got {threshold}")
    if compact is None:
        compact = x.device.type == "cpu"
    shape = (-1,) + (1,) * (x.dim() - 1)
    with eval_mode(model):
        x_adv = random_start(x, eps, start, sigma)
        # the working set: rows `work` of the batch (None = all), their iterates, clean points, labels
        work: torch.Tensor | None = None
        xw, x0, yw = x_adv, x, y
        active = torch.ones_like(y, dtype=torch.bool)
        for k in range(steps):
            g = input_grad(model, xw, lambda z: ce_loss(z, yw))  # summed CE: per-example gradients
            if k > 0:  # x^k is the result of a step: check it before taking the next one
                active = active & (fosc(xw, x0, g, eps) > threshold)
            xw = torch.where(active.view(shape), project_linf(xw + alpha * g.sign(), x0, eps), xw).detach()
            if compact and k + 1 < steps and not bool(active.all()):  # host read: free on CPU
                rows = torch.arange(len(x), device=x.device) if work is None else work
                stopped = ~active
                x_adv = x_adv.index_copy(0, rows[stopped], xw[stopped])
                keep = active.nonzero().squeeze(1)
                work, xw, x0, yw, active = rows[keep], xw[keep], x0[keep], yw[keep], active[keep]
                if work.numel() == 0:
                    return x_adv.detach()
    if work is None:
        return xw.detach()
    return x_adv.index_copy(0, work, xw).detach()
