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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from darht.attacks.pgd import pgd
from darht.constraints import above, between
from darht.methods.args import StepSizeArgs, arg
from darht.methods.base import Method
from darht.methods.losses import kl_probs, log_probs, soft_labels
from darht.registry import METHODS


@METHODS.register("ard")
class ARD(Method):
    @dataclass(frozen=True)
    class Args(StepSizeArgs):
        alpha: float = arg(1.0, between(0, 1))  # weight of the KD term
        t: float = arg(30.0, above(0))          # temperature

    name = "ard"
    needs_teachers = True

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.args
        t = a.t
        target = soft_labels(self.teachers, x, t)                                     # clean x
        x_adv = self.perturb(pgd, x, y, eps=a.eps, alpha=a.step_size, steps=a.steps, loss="ce", start="uniform")
        kd = t * t * kl_probs(target, log_probs(self.model(x_adv), t)).mean()
        out = {"kd": kd.detach()}
        loss = a.alpha * kd
        if a.alpha < 1:  # the clean forward only when CE counts (it also moves BN statistics)
            ce = F.cross_entropy(self.model(x), y)
            loss = loss + (1 - a.alpha) * ce
            out["ce"] = ce.detach()
        out["loss"] = loss
        return out
