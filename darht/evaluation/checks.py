"""AutoAttack-style sanity checks on an evaluation: each returns a sentence a reviewer would want.

- a randomized model (outputs differ on the same input) must be attacked with EOT;
- zero input gradients on many examples point to gradient masking;
- a black-box attack (Square) beating every white-box attack points to gradient masking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WHITE_BOX = ("fgsm", "pgd", "cw-inf", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t")


def _outputs_vary(model: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        a, b = model(x), model(x)
    return not torch.allclose(a, b)


def zero_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of examples whose CE input gradient is exactly zero."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return (g.flatten(1).abs().sum(1) == 0).float().mean().item()


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, summary: dict,
                  device: torch.device, *, randomized: bool, eot: int = 1) -> list[str]:
    model.eval()
    x, y = x.to(device), y.to(device)
    notes: list[str] = []
    varies = len(x) > 0 and _outputs_vary(model, x)
    if (randomized or varies) and eot <= 1:
        notes.append("randomized model (outputs differ on the same input): evaluate it with EOT "
                     "(--eot N for in-house attacks, attack 'autoattack-rand').")
    if len(x):
        frac = zero_gradient_fraction(model, x, y)
        if frac > 0:
            notes.append(f"zero input gradient on {100 * frac:.1f}% of checked examples: possible "
                         "gradient masking; trust black-box attacks (square) more.")
    robust = {k: v["mean"] for k, v in summary.get("robust", {}).items()}
    white = [robust[k] for k in WHITE_BOX if k in robust]
    if "square" in robust and white and robust["square"] < min(white) - 1e-9:
        notes.append(f"Square (black-box) is stronger than every white-box attack "
                     f"({100 * robust['square']:.2f}% < {100 * min(white):.2f}%): possible gradient masking.")
    return notes
