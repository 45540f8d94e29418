"""PGD (Madry et al.) with CE, CW-margin or KL loss, and CW-inf (PGD on the CW margin)."""

from __future__ import annotations

import torch
from torch import nn

from darht.attacks.core import (LossFn, ce_loss, check_inputs, clean_probs, cw_loss, eval_mode,
                                input_grad, kl_loss, project_linf, random_start)
from darht.errors import DarhtError
from darht.registry import ATTACKS


def make_loss(loss: str, y: torch.Tensor | None, kappa: float = 50.0,
              target_probs: torch.Tensor | None = None) -> LossFn:
    """logits -> scalar loss to ascend, summed over the batch."""
    if loss == "ce":
        if y is None:
            raise DarhtError("loss 'ce' needs labels y")
        return lambda z: ce_loss(z, y)
    if loss == "cw":
        if y is None:
            raise DarhtError("loss 'cw' needs labels y")
        return lambda z: cw_loss(z, y, kappa)
    if loss == "kl":
        if target_probs is None:
            raise DarhtError("loss 'kl' needs target_probs")
        return lambda z: kl_loss(z, target_probs)
    raise DarhtError(f"unknown attack loss '{loss}'; choose from: ce, cw, kl")


@ATTACKS.register("pgd", eot="eot", steps="steps", white_box=True,
                  training={"eps": 8 / 255, "alpha": 2 / 255, "start": "uniform"},  # PGD-AT (Madry et al.)
                  paper_defaults={"steps": 10, "alpha": 2 / 255, "loss": "ce", "start": "normal", "sigma": 0.001})
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, *, eps: float = 8 / 255,
        alpha: float = 2 / 255, steps: int = 10, loss: str = "ce", kappa: float = 50.0,
        target_probs: torch.Tensor | None = None, start: str = "normal", sigma: float = 0.001,
        eot: int = 1) -> torch.Tensor:
    """`steps` sign-steps x' <- clip_[0,1](clip_{x+-eps}(x' + alpha * sign(grad))) from `start`.

    Returns the last iterate (as Madry/TRADES/the DARHT evaluation do), not the best one.
    loss="kl" ascends KL(target_probs || softmax f(x')); target_probs defaults to softmax f(x).
    """
    check_inputs(x, y, eps, steps)
    with eval_mode(model):
        if loss == "kl" and target_probs is None:
            target_probs = clean_probs(model, x)
        loss_fn = make_loss(loss, y, kappa, target_probs)
        x_adv = random_start(x, eps, start, sigma)
        for _ in range(steps):
            g = input_grad(model, x_adv, loss_fn, eot)
            x_adv = project_linf(x_adv + alpha * g.sign(), x, eps).detach()
    return x_adv


@ATTACKS.register("cw-inf", eot="eot", steps="steps", white_box=True,
                  paper_defaults={"kappa": 50.0, "steps": 30, "alpha": None})  # alpha None = eps / 4
def cw_inf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
           steps: int = 30, alpha: float | None = None, kappa: float = 50.0,
           eot: int = 1) -> torch.Tensor:
    """CW-inf: PGD on the CW margin loss, uniform start, step eps/4 unless `alpha` is given."""
    return pgd(model, x, y, eps=eps, alpha=eps / 4 if alpha is None else alpha, steps=steps,
               loss="cw", kappa=kappa, start="uniform", eot=eot)
