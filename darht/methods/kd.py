"""Plain knowledge distillation (Hinton et al., 2015) on clean inputs.

loss = alpha * t^2 * KL(softmax(T(x)/t) || softmax(S(x)/t)) + (1 - alpha) * CE(S(x), y)
Defaults t = 4, alpha = 0.9: the common Hinton-style setting for CIFAR-scale students.
With several teachers the soft labels are the mean of the teachers' softened probabilities.
KL is summed over classes and averaged over examples; the t^2 keeps gradient scale comparable
across temperatures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from darht.constraints import above, between
from darht.methods.args import arg
from darht.methods.base import Method
from darht.methods.losses import kl_probs, log_probs, soft_labels
from darht.registry import METHODS


@METHODS.register("kd")
class KD(Method):
    @dataclass(frozen=True)
    class Args:
        alpha: float = arg(0.9, between(0, 1))  # weight of the KD term
        t: float = arg(4.0, above(0))           # temperature

    name = "kd"
    needs_teachers = True

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a, t = self.args.alpha, self.args.t
        target = soft_labels(self.teachers, x, t)                  # [N,K]
        logits = self.model(x)
        kd = t * t * kl_probs(target, log_probs(logits, t)).mean()
        ce = F.cross_entropy(logits, y)
        return {"loss": a * kd + (1 - a) * ce, "ce": ce.detach(), "kd": kd.detach()}
