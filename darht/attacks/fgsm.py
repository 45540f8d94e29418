"""FGSM (Goodfellow et al.): one signed-gradient step of size eps on the cross-entropy."""

from __future__ import annotations

import torch
from torch import nn

from darht.attacks.core import ce_loss, check_inputs, eval_mode, input_grad, project_linf
from darht.attacks.core import random_start as start_point
from darht.registry import ATTACKS


@ATTACKS.register("fgsm", eot="eot", white_box=True, paper_defaults={"random_start": False})
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
         random_start: bool = False, alpha: float | None = None, eot: int = 1) -> torch.Tensor:
    """x' = clip(x0 + alpha * sign(grad_x CE(f(x0), y))), x0 = x or x + U(-eps, eps); alpha = eps.

    The DARHT paper's FGSM has no random start; `random_start=True` is the "FGSM-RS" variant.
    """
    check_inputs(x, y, eps)
    alpha = eps if alpha is None else alpha
    with eval_mode(model):
        x0 = start_point(x, eps, "uniform" if random_start else "none")
        g = input_grad(model, x0, lambda z: ce_loss(z, y), eot)
        return project_linf(x0 + alpha * g.sign(), x, eps).detach()
