"""IAD, introspective adversarial distillation (Zhu et al., ICLR 2022), on ARD (the paper's IAD-I).

Paper: J. Zhu, J. Yao, B. Han, J. Zhang, T. Liu, G. Niu, J. Zhou, J. Xu, H. Yang, "Reliable
Adversarial Distillation with Unreliable Teachers", ICLR 2022 (sec. 4, the IAD objective).
Code: github.com/ZFancy/IAD (IAD-I.py: IAD built on ARD).

The student trusts the teacher on x' only as much as the teacher is right there:
    w_i = P_T(y_i | x'_i)^beta   (teacher's probability of the true label at x', temperature 1, no grad),
and, to the extent it does not, it introspects: matches its own clean prediction.
    x'   = PGD on CE(S(x'), y) against the student (uniform start, eps 8/255, step 2/255, 10 steps)
    loss = alpha * t^2 * KL(T^t(x) || S^t(x'))                 ARD's term: teacher on the CLEAN x
         + alpha * (1 - w) * KL(S(x) || S(x'))                 introspection, after the warm-up
         + (1 - alpha) * CE(S(x), y)
alpha = 1, t = 1, beta = 0.1; each KL summed over classes, averaged over examples (the original's
sum / B: no factor). The introspection gradient flows through both S(x) and S(x'), as in the code.
Warm-up: plain ARD for the first 60 of 200 epochs (`begin` = 0.3 of the run), introspection after.
Several teachers (an extension; IAD uses one): the mean of their probabilities serves as T,
both for the soft labels and for the trust w.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F

from darht.attacks.pgd import pgd
from darht.constraints import above, at_least, between
from darht.methods.args import StepSizeArgs, arg
from darht.methods.base import Method, OriginalSchedule
from darht.methods.losses import kl_logits, kl_probs, log_probs, soft_labels
from darht.registry import METHODS


@METHODS.register("iad")
class IAD(Method):
    @dataclass(frozen=True)
    class Args(StepSizeArgs):
        alpha: float = arg(1.0, between(0, 1))   # weight of KD + introspection (1 - alpha: CE on x)
        t: float = arg(1.0, above(0))            # temperature of the KD term
        beta: float = arg(0.1, at_least(0))      # trust w = P_T(y|x')^beta
        begin: float = arg(0.3, between(0, 1))   # warm-up, as a fraction of the run (60 of 200 epochs)

    name = "iad"
    needs_teachers = True
    # IAD-I.py: SGD 0.1, momentum 0.9, wd 2e-4, batch 128, 200 epochs, lr x0.1 at epochs 100 and 150.
    original_schedule = OriginalSchedule(
        epochs=200, lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128,
        milestones=(100, 150), lr_factors=(0.1, 0.01),
        source="Zhu et al. 2022, IAD, github.com/ZFancy/IAD IAD-I.py (200 epochs, lr x0.1 at 100 and 150)")

    def introspecting(self) -> bool:
        """Past the warm-up: 0-based epoch >= begin * epochs (exact: begin read as a decimal)."""
        return self.epoch >= Fraction(str(self.args.begin)) * self.epochs

    def trust(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """w = P_T(y | x')^beta per example [N], no grad (T: the teachers' mean probabilities)."""
        p = soft_labels(self.teachers, x_adv)                                         # [N,K]
        return p.gather(1, y[:, None]).squeeze(1).pow(self.args.beta)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.args
        target = soft_labels(self.teachers, x, a.t)                                   # clean x
        x_adv = self.perturb(pgd, x, y, eps=a.eps, alpha=a.step_size, steps=a.steps, loss="ce", start="uniform")
        logits_adv = self.model(x_adv)
        kd = a.t * a.t * kl_probs(target, log_probs(logits_adv, a.t)).mean()
        out = {"kd": kd.detach()}
        loss = a.alpha * kd
        introspect = self.introspecting()
        if introspect or a.alpha < 1:  # one clean forward serves both terms (it also moves BN statistics)
            logits_nat = self.model(x)
        if introspect:
            w = self.trust(x_adv, y)
            intro = ((1 - w) * kl_logits(log_probs(logits_nat), log_probs(logits_adv))).mean()
            loss = loss + a.alpha * intro
            out["introspection"] = intro.detach()
            out["trust"] = w.mean()
        if a.alpha < 1:
            ce = F.cross_entropy(logits_nat, y)
            loss = loss + (1 - a.alpha) * ce
            out["ce"] = ce.detach()
        out["loss"] = loss
        return out
