"""ARD, adversarially robust distillation (Goldblum et al., 2020).

x' = PGD on CE(S(x'), y) against the student (uniform start, eps 8/255, step 2/255, 10 steps);
loss = alpha * t^2 * KL(softmax(T(x)/t) || softmax(S(x')/t)) + (1 - alpha) * CE(S(x), y),
alpha = 1, t = 30; the teacher sees the CLEAN x. Several teachers: mean of their softened probabilities.

Scale: the KL here is summed over classes and averaged over examples. The original code used
`nn.KLDivLoss()` averaged over all B*C elements, i.e. our KD term is C times the original's
(10x on CIFAR-10). With alpha = 1 that only rescales the gradient (like a C-times larger lr,
weight decay aside); with alpha < 1 it shifts the balance towards the KD term.
`alpha` is ARD's loss mix (as in the paper); the attack's step size is `step_size`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks.pgd import pgd
from darht.methods.base import Method
from darht.methods._args import check_args, number
from darht.methods.kd import fraction, kl_probs, positive, require_teachers, soft_labels, unwrap
from darht.registry import METHODS


@METHODS.register("ard")
class ARD(Method):
    name = "ard"
    needs_teachers = True

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, *,
                 alpha: float = 1.0, t: float = 30.0, eps: float = 8 / 255, step_size: float = 2 / 255,
                 steps: int = 10, **unknown: Any):
        check_args(self, unknown)
        super().__init__(model, teachers)
        require_teachers(self.name, self.teachers)
        self.alpha, self.t = fraction(self, "alpha", alpha), positive(self, "t", t)
        self.eps, self.step_size = number(self, "eps", eps), number(self, "step_size", step_size)
        self.steps = number(self, "steps", steps, integer=True)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.t
        target = soft_labels(self.teachers, x, t)                                     # clean x
        x_adv = pgd(unwrap(self.model), x, y, eps=self.eps, alpha=self.step_size, steps=self.steps,
                    loss="ce", start="uniform")
        kd = t * t * kl_probs(target, F.log_softmax(self.model(x_adv) / t, dim=-1)).mean()
        out = {"kd": kd.detach()}
        loss = self.alpha * kd
        if self.alpha < 1:  # the clean forward only when CE counts (it also moves BN statistics)
            ce = F.cross_entropy(self.model(x), y)
            loss = loss + (1 - self.alpha) * ce
            out["ce"] = ce.detach()
        out["loss"] = loss
        return out
