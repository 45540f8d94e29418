"""The losses the training methods share, each written once.

KL divergences are summed over classes (the last dim) and left per example; a method averages
over the batch. Two forms of the one KL, by what the first distribution is:
  - `kl_logits(log_p, log_q)`: p is a model's output, given as log-probabilities (gradient may
    flow through both sides; TRADES, DARHT);
  - `kl_probs(p, log_q)`: p is a fixed target given as probabilities, e.g. soft labels from
    frozen teachers (0 log 0 = 0; KD, ARD, RSLAD, MTARD).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def kl_logits(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last dim, from log-probabilities (safe for p -> 0 with grad)."""
    log_p, log_q = _wide(log_p), _wide(log_q)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def kl_probs(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last dim, p given as probabilities (0 log 0 = 0)."""
    p, log_q = _wide(p), _wide(log_q)
    return (torch.xlogy(p, p) - p * log_q).sum(-1)


def log_probs(logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """log softmax(logits / t) over the last dim, in float32 (a bf16 log-softmax under autocast
    would round away what the KL measures)."""
    return F.log_softmax(_wide(logits) / t, dim=-1)


def soft_labels(teachers: Iterable[nn.Module], x: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """Mean over teachers of softmax(T_j(x) / t): [N, K], no grad."""
    with torch.no_grad():
        probs = [F.softmax(T(x).float() / t, dim=-1) for T in teachers]
    return torch.stack(probs).mean(0)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of the batch classified correctly, as a detached float scalar."""
    return (logits.detach().argmax(1) == y).float().mean()


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                beta: float) -> dict[str, torch.Tensor]:
    """TRADES (Zhang et al. 2019): CE_mean(f(x), y) + beta * (1/B) sum_i KL(p_i || q_i),
    p = softmax f(x), q = softmax f(x').

    Gradient flows through both p and q (the clean branch is not detached), as in TRADES' code.
    """
    ce = F.cross_entropy(logits_nat, y)
    kl = kl_logits(log_probs(logits_nat), log_probs(logits_adv)).mean()
    return {"loss": ce + beta * kl, "ce": ce.detach(), "kl": kl.detach(), "adv_acc": accuracy(logits_adv, y)}
