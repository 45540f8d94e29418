"""Plain knowledge distillation (Hinton et al., 2015) on clean inputs, and the helpers the
distillation methods (ard, rslad, mtard, darht) share.

kd:  loss = alpha * t^2 * KL(softmax(T(x)/t) || softmax(S(x)/t)) + (1 - alpha) * CE(S(x), y)
Defaults t = 4, alpha = 0.9: the common Hinton-style setting for CIFAR-scale students.
With several teachers the soft labels are the mean of the teachers' softened probabilities.
KL is summed over classes and averaged over examples; the t^2 keeps gradient scale comparable
across temperatures.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from darht.errors import DarhtError
from darht.methods._args import check_args, number
from darht.methods.base import Method
from darht.registry import METHODS


# -- shared helpers -------------------------------------------------------------------------------
def kl_logits(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last dim, from log-probabilities (safe for p -> 0 with grad)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def kl_probs(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last dim, p given as probabilities (0 log 0 = 0)."""
    return (torch.xlogy(p, p) - p * log_q).sum(-1)


def soft_labels(teachers: Iterable[nn.Module], x: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """Mean over teachers of softmax(T_j(x) / t): [N, K], no grad."""
    with torch.no_grad():
        probs = [F.softmax(T(x).float() / t, dim=-1) for T in teachers]
    return torch.stack(probs).mean(0)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DDP / torch.compile wrappers: inner attacks run against it."""
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return model


def fraction(method: Any, arg: str, value: Any) -> float:
    """A number in [0, 1] (a loss mix or probability); DarhtError otherwise."""
    v = number(method, arg, value)
    if v > 1:
        raise DarhtError(f"method '{method.name}': {arg} must be <= 1, got {value!r}")
    return v


def positive(method: Any, arg: str, value: Any) -> float:
    """A number > 0 (a temperature); DarhtError otherwise."""
    v = number(method, arg, value)
    if v <= 0:
        raise DarhtError(f"method '{method.name}': {arg} must be > 0, got {value!r}")
    return v


def require_teachers(method: str, teachers: list, exactly: int | None = None) -> None:
    if not teachers:
        raise DarhtError(f"method '{method}' needs at least one teacher (set `teachers`)")
    if exactly is not None and len(teachers) != exactly:
        raise DarhtError(f"method '{method}' needs exactly {exactly} teachers, got {len(teachers)}")


# -- the method -----------------------------------------------------------------------------------
@METHODS.register("kd")
class KD(Method):
    name = "kd"
    needs_teachers = True

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, *,
                 alpha: float = 0.9, t: float = 4.0, **unknown: Any):
        check_args(self, unknown)
        super().__init__(model, teachers)
        require_teachers(self.name, self.teachers)
        self.alpha = fraction(self, "alpha", alpha)
        self.t = positive(self, "t", t)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.t
        target = soft_labels(self.teachers, x, t)                  # [N,K]
        logits = self.model(x)
        kd = t * t * kl_probs(target, F.log_softmax(logits / t, dim=-1)).mean()
        ce = F.cross_entropy(logits, y)
        loss = self.alpha * kd + (1 - self.alpha) * ce
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach()}
