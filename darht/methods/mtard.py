"""MTARD, multi-teacher adversarial robustness distillation (Zhao et al., 2022).

teachers = [T_adv, T_nat] (the trainer passes cfg.teachers + [cfg.teacher_natural]).
x' = x + 0.001 N(0, I), then sign-steps on CE(S(x'), y) against the student (eps 8/255, step 2/255,
10 steps). L_adv = KL(softmax T_adv(x') || softmax S(x')), L_nat = KL(softmax T_nat(x) || softmax S(x)),
each summed over classes, averaged over examples.
Adaptive weights, 0.5/0.5 at first, updated every step before the backward pass:
    r_k = L_k / L_k(first step),  w_nat <- w_nat - eta_eff * (w_nat - r_nat / (r_adv + r_nat)),
    w_adv = 1 - w_nat,            eta_eff = eta * lr_scale  (eta decays with the lr; eta = 0.025).
loss = w_adv L_adv + w_nat L_nat. The weights and first-step losses are resumable state.
Under DDP the two losses are averaged over ranks before the update so every rank keeps the same weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from darht.attacks.pgd import pgd
from darht.methods.base import Method
from darht.methods._args import check_args, number
from darht.methods.kd import fraction, kl_probs, require_teachers, unwrap
from darht.registry import METHODS


@METHODS.register("mtard")
class MTARD(Method):
    name = "mtard"
    needs_teachers = True

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, *,
                 eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, eta: float = 0.025,
                 **unknown: Any):
        check_args(self, unknown)
        super().__init__(model, teachers)
        require_teachers(self.name, self.teachers, exactly=2)
        self.eps, self.alpha = number(self, "eps", eps), number(self, "alpha", alpha)
        self.steps = number(self, "steps", steps, integer=True)
        self.eta = fraction(self, "eta", eta)
        self.w_nat = 0.5
        self.init_adv: float | None = None  # L_adv, L_nat at the first step
        self.init_nat: float | None = None

    def update_weights(self, l_adv: float, l_nat: float) -> None:
        """One adaptive-weight step from this batch's (rank-averaged) losses."""
        if self.init_adv is None or self.init_nat is None:
            self.init_adv, self.init_nat = l_adv, l_nat
        r_adv = l_adv / max(self.init_adv, 1e-12)
        r_nat = l_nat / max(self.init_nat, 1e-12)
        target = r_nat / max(r_adv + r_nat, 1e-12)
        self.w_nat -= self.eta * self.lr_scale * (self.w_nat - target)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        t_adv, t_nat = self.teachers
        x_adv = pgd(unwrap(self.model), x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                    loss="ce", start="normal", sigma=0.001)
        with torch.no_grad():
            p_adv = F.softmax(t_adv(x_adv).float(), dim=-1)
            p_nat = F.softmax(t_nat(x).float(), dim=-1)
        l_adv = kl_probs(p_adv, F.log_softmax(self.model(x_adv), dim=-1)).mean()
        l_nat = kl_probs(p_nat, F.log_softmax(self.model(x), dim=-1)).mean()
        pair = torch.stack([l_adv.detach(), l_nat.detach()]).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(pair)
            pair /= dist.get_world_size()
        self.update_weights(*pair.tolist())
        w_adv = 1.0 - self.w_nat
        loss = w_adv * l_adv + self.w_nat * l_nat
        return {"loss": loss, "kl_adv": l_adv.detach(), "kl_nat": l_nat.detach(),
                "w_adv": torch.tensor(w_adv), "w_nat": torch.tensor(self.w_nat)}

    def state_dict(self) -> dict:
        return {"w_nat": self.w_nat, "init_adv": self.init_adv, "init_nat": self.init_nat}

    def load_state_dict(self, state: dict) -> None:
        self.w_nat = float(state.get("w_nat", 0.5))
        self.init_adv, self.init_nat = state.get("init_adv"), state.get("init_nat")
