"""AutoAttack-style sanity checks on an evaluation: each returns a sentence a reviewer would want.

- a randomized model must be attacked with EOT and judged over several draws;
- zero input gradients on many examples point to gradient masking;
- a black-box attack (Square) beating every white-box attack points to gradient masking;
- our verdict above pyautoattack's own one on an ensemble means a number may be too high;
- overlapping trials are not independent samples;
- a forward that returns probabilities instead of logits weakens the attacks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks.core import fp32
from darht.registry import ATTACKS


def zero_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of examples whose CE input gradient is exactly zero."""
    x = x.clone().requires_grad_(True)
    with fp32(x):
        loss = F.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return (g.flatten(1).abs().sum(1) == 0).float().mean().item()


@torch.no_grad()
def outputs_probabilities(model: nn.Module, x: torch.Tensor) -> bool:
    """AutoAttack's `check_range_output` idea: rows that are non-negative and sum to 1."""
    with fp32(x):
        z = model(x).float()
    return bool((z >= 0).all() and torch.allclose(z.sum(1), torch.ones(len(z), device=z.device), atol=1e-4))


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, record: dict,
                  device: torch.device, *, res) -> list[str]:
    """`record`: an evaluation record (summary, trials_disjoint, ...); `res`: its Resolved settings."""
    model.eval()
    x, y = x.to(device), y.to(device)
    notes: list[str] = []
    summary = record.get("summary", {})
    if res.randomized:
        eot_attacks = [a for a in res.attacks if ATTACKS.meta(a).get("eot")]
        if res.eot <= 1 and eot_attacks:
            notes.append("randomized model attacked with EOT 1 (set explicitly): gradients are single noisy "
                         "draws, so robust accuracy may be too high; use the default EOT 20.")
        if res.draws <= 1:
            notes.append("randomized model judged on 1 draw per example: robust accuracy is a noisy estimate.")
    if len(x) and outputs_probabilities(model, x):
        notes.append("the model's outputs are probabilities (non-negative rows summing to 1), not logits: "
                     "cross-entropy and margin attacks on them are weakened; return logits from forward().")
    if len(x):
        frac = zero_gradient_fraction(model, x, y)
        if frac > 0:
            notes.append(f"zero input gradient on {100 * frac:.1f}% of checked examples: possible "
                         "gradient masking; trust black-box attacks (square) more.")
    robust = {k: v["mean"] for k, v in summary.get("robust", {}).items()}
    white = [robust[k] for k in res.attacks if k in robust and ATTACKS.meta(k).get("white_box")]
    black = [k for k in res.attacks if k in robust and ATTACKS.meta(k).get("white_box") is False]
    for k in black:
        if white and robust[k] < min(white) - 1e-9:
            notes.append(f"{k} (black-box) is stronger than every white-box attack "
                         f"({100 * robust[k]:.2f}% < {100 * min(white):.2f}%): possible gradient masking.")
    strict = {k: v["mean"] for k, v in summary.get("strict", {}).items()}
    for k, theirs in summary.get("pyautoattack_verdict", {}).items():
        if k in strict and strict[k] > theirs + 1e-9:
            notes.append(f"{k}: pyautoattack's own verdict ({100 * theirs:.2f}%: fooled if any draw along its "
                         f"search was fooled) is below our strict one ({100 * strict[k]:.2f}%).")
    if record.get("trials_disjoint") is False:
        notes.append("trials overlap (n * trials exceeds the pool): they are not independent samples.")
    for name, e in (record.get("eot_sweep") or {}).get("attacks", {}).items():
        if e.get("converged") is False:
            notes.append(f"{name}: robust accuracy still falls at the largest EOT of the sweep; raise --eot.")
    return notes
