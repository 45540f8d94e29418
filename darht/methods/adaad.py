"""AdaAD, adaptive adversarial distillation (Huang et al., CVPR 2023).

Paper: B. Huang, M. Chen, Y. Wang, J. Lu, M. Cheng, W. Wang, "Boosting Accuracy and Robustness
of Student Models via Adaptive Adversarial Distillation", CVPR 2023, pp. 24668-24677 (sec. 3).
Code: github.com/boyellow/AdaAD (AT_helper.py `adaad_inner_loss`, main.py method 'AdaAD').

The teacher takes part in the inner maximisation: x' is where teacher and student disagree most,
    x' = argmax_{||x' - x||_inf <= eps} KL(T(x') || S(x')),
found by sign-steps from x + 0.001 N(0, I) (eps 8/255, step 2/255, 10 steps) with the gradient
through BOTH networks (student in eval mode, teacher frozen in eval mode); then
    loss = alpha * KL(T(x') || S(x')) + (1 - alpha) * KL(T(x) || S(x)),   alpha = 1,
temperature 1, each KL summed over classes and averaged over examples. The original averages
CIFAR-10's KL over all B*C elements (`nn.KLDivLoss()`), CIFAR-100's over B: ours is C times its
CIFAR-10 value (a rescaled gradient at alpha = 1, as for ARD) and equal to its CIFAR-100 one.
With alpha = 1 no clean forward runs (the original's only fed BN statistics and a log line).
Several teachers (an extension; AdaAD uses one): T is the mean of the teachers' probabilities.

A `FrozenTeacher` runs under inference mode (no input gradient), so the attack calls the module
it wraps (frozen weights, eval mode), in bf16 when the teacher was loaded with bf16.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from darht.attacks.core import check_inputs, eval_mode, fp32, project_linf, random_start
from darht.constraints import between
from darht.methods.args import StepSizeArgs, arg
from darht.methods.base import Method, OriginalSchedule
from darht.methods.losses import kl_logits, log_probs
from darht.models.teachers import FrozenTeacher
from darht.registry import METHODS


def teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's fp32 logits at x WITH the graph back to x (for an attack): a FrozenTeacher's
    wrapped module, in eval mode, in bf16 if the teacher is set to bf16; weights stay frozen."""
    net, bf16 = (teacher.model, teacher.bf16) if isinstance(teacher, FrozenTeacher) else (teacher, False)
    amp = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with eval_mode(net), amp:
        return net(x).float()


def teacher_log_probs(teachers: Sequence[nn.Module], x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """log of the mean of the teachers' probabilities at x, [N, K] fp32 (one teacher: its
    log-softmax). grad=True keeps the graph to x (`teacher_logits`); otherwise the teachers'
    own no-grad forward."""
    if grad:
        logs = [log_probs(teacher_logits(t, x)) for t in teachers]
    else:
        with torch.no_grad():
            logs = [log_probs(t(x)) for t in teachers]
    if len(logs) == 1:
        return logs[0]
    return torch.logsumexp(torch.stack(logs), 0) - math.log(len(logs))   # [J,N,K] -> [N,K]


def disagreement(model: nn.Module, teachers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """KL(T(x) || S(x)) per example [N], differentiable in x through teacher and student."""
    return kl_logits(teacher_log_probs(teachers, x, grad=True), log_probs(model(x)))


def adaad_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *,
              teachers: Sequence[nn.Module], eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
              start: str = "normal", sigma: float = 0.001) -> torch.Tensor:
    """AdaAD's inner maximisation: `steps` sign-steps ascending sum_i KL(T(x'_i) || S(x'_i)) from
    `start`, each projected into the eps ball and [0, 1]. Labels are not used. Runs in fp32 with
    `model` in eval mode (modes restored); input gradients only (no weight's .grad is touched).

    Not registered as an evaluation attack: it needs the teachers, which no evaluation has."""
    check_inputs(x, None, eps, steps)
    with eval_mode(model):
        x_adv = random_start(x, eps, start, sigma)
        for _ in range(steps):
            xi = x_adv.detach().float().requires_grad_(True)
            with torch.enable_grad(), fp32(xi):
                gap = disagreement(model, teachers, xi).sum()  # summed: per-example steps
                g = torch.autograd.grad(gap, [xi])[0]
            x_adv = project_linf(x_adv + alpha * g.sign(), x, eps).detach()
    return x_adv


@METHODS.register("adaad")
class AdaAD(Method):
    @dataclass(frozen=True)
    class Args(StepSizeArgs):
        alpha: float = arg(1.0, between(0, 1))        # weight of KL at x' (1 - alpha: at the clean x)

    name = "adaad"
    needs_teachers = True
    # AdaAD's CIFAR recipe (main.py `lr_decay`, piecewise: lr / 10 from epoch 100, / 100 from 150).
    original_schedule = OriginalSchedule(
        epochs=200, lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128,
        milestones=(100, 150), lr_factors=(0.1, 0.01),
        source="Huang et al. 2023, AdaAD sec. 4.1 and github.com/boyellow/AdaAD main.py "
               "(200 epochs, lr x0.1 at 100 and 150)")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.args
        x_adv = self.perturb(adaad_pgd, x, y, teachers=self.teachers, eps=a.eps, alpha=a.step_size,
                             steps=a.steps)
        kl_adv = kl_logits(teacher_log_probs(self.teachers, x_adv), log_probs(self.model(x_adv))).mean()
        out = {"kl_adv": kl_adv.detach()}
        loss = a.alpha * kl_adv
        if a.alpha < 1:  # the clean forward only when its term counts (it also moves BN statistics)
            kl_nat = kl_logits(teacher_log_probs(self.teachers, x), log_probs(self.model(x))).mean()
            loss = loss + (1 - a.alpha) * kl_nat
            out["kl_nat"] = kl_nat.detach()
        out["loss"] = loss
        return out
