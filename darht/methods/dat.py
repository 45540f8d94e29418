"""Dynamic adversarial training, DAT (Wang, Ma, Bailey, Yi, Zhou, Gu, ICML 2019, "On the
Convergence and Robustness of Adversarial Training", sec. 3-5, Algorithm 1; released code
YisenWang/dynamic_adv_training, train_models.py and pgd_attack.py).

The inner maximisation's convergence quality is measured by the First-Order Stationary Condition
    c(x') = eps * ||grad_x' l(x')||_1 - <x' - x, grad_x' l(x')>      (l = CE, per example)
and the attack (darht.attacks.fosc.fosc_pgd) stops an example once c(x') <= c_t. The threshold
falls linearly over training, so early epochs train on loosely converged examples and late ones
on well converged ones:
    c_t = max(c_max - c_max * t / T', 0)     (t = 0-based epoch, T' = the FOSC control epoch)
    loss = CE_mean(f(x'), y)
Released defaults (CIFAR-10, WRN-32-10, the model of Table 5's DAT row): c_max = 0.5, T' = 100 of
T = 120 epochs, eps = 0.031, step eps / 4, 10 steps, uniform random start. With `scale_schedule`
(default) T' keeps its fraction of the run: T' * epochs / original_epochs.

`loss_weighting: true` reproduces a detail of the released code that is not in the paper's
Algorithm 1: from the second epoch on each example's CE is weighted by its own (detached,
eval-mode) CE on x', i.e. loss = mean_i(w_i * CE_i), w_i = CE(f_eval(x'_i), y_i). Off by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from darht.attacks.core import eval_mode
from darht.attacks.fosc import fosc_pgd
from darht.constraints import above, at_least
from darht.methods.args import arg
from darht.methods.base import Method, OriginalSchedule
from darht.methods.losses import accuracy
from darht.registry import METHODS


def fosc_threshold(epoch: int, epochs: int, c_max: float = 0.5, control_epochs: float = 100,
                   original_epochs: int = 120, scale: bool = True) -> float:
    """c_t for 0-based `epoch` of a run of `epochs`: c_max falling linearly to 0 at the control
    epoch T' (`control_epochs`, in the original's `original_epochs`; scaled to the run with
    `scale`), 0 after. On the original's 120 epochs: 0.5, 0.495, ..., 0.005, then 0 from t = 100."""
    t_ctrl = control_epochs * epochs / original_epochs if scale else control_epochs
    return max(c_max - c_max * (epoch / t_ctrl), 0.0)


@METHODS.register("dat")
class DAT(Method):
    """Args: eps, alpha (step size), steps (K), c_max, control_epochs (T'), original_epochs (T),
    scale_schedule, loss_weighting."""

    @dataclass(frozen=True)
    class Args:
        eps: float = 0.031
        alpha: float = arg(0.031 / 4, at_least(0))
        steps: int = arg(10, at_least(0))
        c_max: float = arg(0.5, at_least(0))
        control_epochs: float = arg(100.0, above(0))  # T': c_t reaches 0 here (the original's epochs)
        original_epochs: int = arg(120, at_least(1))  # the unit of control_epochs when scaled
        scale_schedule: bool = True
        loss_weighting: bool = False                  # the released code's CE-weighted loss

    name = "dat"
    # train_models.py: Keras SGD lr 0.01, momentum 0.9, lr / 10 when (ep + 1) == 60 and == 100 of
    # 120 epochs, batch 128; its l2(2e-3) kernel penalty is SGD weight decay 4e-3. Its Keras
    # `decay=1e-4` (lr / (1 + 1e-4 * iteration)) has no counterpart here.
    original_schedule = OriginalSchedule(
        epochs=120, lr=0.01, momentum=0.9, weight_decay=4e-3, batch_size=128,
        milestones=(59, 99), lr_factors=(0.1, 0.01),
        source="Wang et al. 2019, YisenWang/dynamic_adv_training train_models.py")

    @property
    def threshold(self) -> float:
        """c_t of the current epoch (set by start_epoch)."""
        a = self.args
        return fosc_threshold(self.epoch, self.epochs, a.c_max, a.control_epochs, a.original_epochs,
                              a.scale_schedule)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a, c_t = self.args, self.threshold
        x_adv = self.perturb(fosc_pgd, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, threshold=c_t,
                             start="uniform")
        logits = self.model(x_adv)
        ce_i = F.cross_entropy(logits, y, reduction="none")
        ce = ce_i.mean()
        out = {"ce": ce.detach(), "adv_acc": accuracy(logits, y),
               "c_t": x.new_full((), c_t, dtype=torch.float32)}
        if a.loss_weighting and self.epoch > 0:  # the released code weights from its second epoch
            with torch.no_grad(), eval_mode(self.attack_model):
                w = F.cross_entropy(self.attack_model(x_adv).float(), y, reduction="none")
            out["loss"] = (w * ce_i).mean()
        else:
            out["loss"] = ce
        return out
