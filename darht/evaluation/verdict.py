"""The verdict rule: how an attacked input is judged, for deterministic and randomized models alike.

A randomized model (MC dropout, input noise, ...) gives a different prediction on every call, so
"is x_adv classified correctly?" has no single answer. The rule used everywhere in darht:

- an example's robustness at x_adv is the fraction of R fresh stochastic predictions that are
  correct (R = `draws`); robust accuracy is the mean of that, i.e. the expected accuracy of one
  deployed prediction; the strict variant counts an example only if all R draws are correct;
- a deterministic model is judged by its one prediction (R = 1): exactly the usual 0/1 verdict.

A model is randomized if it says so (`randomized = True` on it or a submodule) or if two forward
passes on the same input differ (AutoAttack's own test, `checks.check_randomized`).
"""

from __future__ import annotations

import torch
from torch import nn

from darht.attacks.core import draw_logits, fp32
from darht.models import is_randomized as says_randomized

DEFAULT_DRAWS = 20


@torch.no_grad()
def outputs_vary(model: nn.Module, x: torch.Tensor) -> bool:
    """True if two eval-mode forward passes on the same input differ."""
    if len(x) == 0:
        return False
    with fp32(x):
        a, b = model(x), model(x)
    return not torch.equal(a, b)


def is_randomized(model: nn.Module, x: torch.Tensor | None = None) -> bool:
    """The model says it is randomized, or (given a probe batch x) its outputs on x vary."""
    return says_randomized(model) or (x is not None and outputs_vary(model, x))


@torch.no_grad()
def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1,
          batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of `draws` predictions that are correct [N] float, all draws correct [N] bool).

    With draws = 1 this is the plain verdict argmax f(x) == y (one forward pass per batch).
    Results are on x's device.
    """
    frac, strict = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with fp32(xb):
            if draws == 1:
                ok = (model(xb).argmax(1) == yb)[None]            # [1, B]
            else:
                ok = draw_logits(model, xb, draws).argmax(2) == yb  # [R, B]
        frac.append(ok.float().mean(0))
        strict.append(ok.all(0))
    if not frac:
        return torch.zeros(0, device=x.device), torch.zeros(0, dtype=torch.bool, device=x.device)
    return torch.cat(frac), torch.cat(strict)
