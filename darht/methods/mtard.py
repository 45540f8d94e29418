"""MTARD, multi-teacher adversarial robustness distillation (Zhao et al., 2022).

Two teacher roles: `adversarial` (a robust teacher) and `natural` (a naturally trained one); a config
gives `teachers: {adversarial: A, natural: B}`, or the list [A, B] in that order.
x' = x + 0.001 N(0, I), then sign-steps on CE(S(x'), y) against the student (eps 8/255, step 2/255,
10 steps). L_adv = KL(softmax T_adv(x') || softmax S(x')), L_nat = KL(softmax T_nat(x) || softmax S(x)),
each summed over classes, averaged over examples.
Adaptive weights, 0.5/0.5 at first, updated every step before the backward pass:
    r_k = L_k / L_k(first step),  w_nat <- w_nat - eta_eff * (w_nat - r_nat / (r_adv + r_nat)),
    w_adv = 1 - w_nat,            eta_eff = eta * lr_scale  (eta decays with the lr; eta = 0.025).
loss = w_adv L_adv + w_nat L_nat. The weights and first-step losses are resumable state.
Under DDP the two losses are averaged over ranks before the update so every rank keeps the same weights.
The weights live on the batch's device as float64 0-dim tensors (the float64 arithmetic of Python
floats, without a host sync per step); `state_dict()` hands them back as plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from darht.attacks.pgd import pgd
from darht.constraints import between
from darht.methods.args import PGDArgs, arg
from darht.methods.base import Method
from darht.methods.losses import kl_probs, log_probs
from darht.registry import METHODS


@METHODS.register("mtard")
class MTARD(Method):
    @dataclass(frozen=True)
    class Args(PGDArgs):
        eta: float = arg(0.025, between(0, 1))    # the weights' learning rate

    name = "mtard"
    needs_teachers = True
    teacher_roles = ("adversarial", "natural")

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, **method_args):
        super().__init__(model, teachers, **method_args)
        # numbers until the first step (or after a resume); 0-dim tensors on the batch's device after it
        self.w_nat: float | torch.Tensor = 0.5
        self.init_adv: float | torch.Tensor | None = None  # L_adv, L_nat at the first step
        self.init_nat: float | torch.Tensor | None = None

    def _on(self, device: torch.device) -> None:
        """The weights (and first-step losses) as tensors on `device`, in the float64 of Python floats
        (float32 where the device has no float64: MPS)."""
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.w_nat, self.init_adv, self.init_nat = (
            None if v is None else torch.as_tensor(v, dtype=dtype, device=device)
            for v in (self.w_nat, self.init_adv, self.init_nat))

    def update_weights(self, l_adv: torch.Tensor | float, l_nat: torch.Tensor | float) -> None:
        """One adaptive-weight step from this batch's (rank-averaged) losses, on the weights' device:
        no host sync. The same operations, in the same order and precision, as on Python floats."""
        if not isinstance(self.w_nat, torch.Tensor):
            self._on(l_adv.device if isinstance(l_adv, torch.Tensor) else torch.device("cpu"))
        w = self.w_nat
        l_adv, l_nat = (torch.as_tensor(v, dtype=w.dtype, device=w.device) for v in (l_adv, l_nat))
        if self.init_adv is None or self.init_nat is None:
            self.init_adv, self.init_nat = l_adv, l_nat
        r_adv = l_adv / self.init_adv.clamp(min=1e-12)   # clamp(min=) == max(v, 1e-12), NaN kept
        r_nat = l_nat / self.init_nat.clamp(min=1e-12)
        target = r_nat / (r_adv + r_nat).clamp(min=1e-12)
        self.w_nat = w - self.args.eta * self.lr_scale * (w - target)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a, t_adv, t_nat = self.args, self.teacher("adversarial"), self.teacher("natural")
        x_adv = self.perturb(pgd, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, loss="ce", start="normal",
                             sigma=0.001)
        with torch.no_grad():
            p_adv = F.softmax(t_adv(x_adv).float(), dim=-1)
            p_nat = F.softmax(t_nat(x).float(), dim=-1)
        l_adv = kl_probs(p_adv, log_probs(self.model(x_adv))).mean()
        l_nat = kl_probs(p_nat, log_probs(self.model(x))).mean()
        pair = torch.stack([l_adv.detach(), l_nat.detach()]).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(pair)
            pair /= dist.get_world_size()
        if not isinstance(self.w_nat, torch.Tensor) or self.w_nat.device != pair.device:
            self._on(pair.device)
        self.update_weights(pair[0], pair[1])
        # float32 weights: what multiplying the fp32 losses by a Python float did (round to fp32)
        w_nat = self.w_nat.float()
        w_adv = (1.0 - self.w_nat).float()
        loss = w_adv * l_adv + w_nat * l_nat
        return {"loss": loss, "kl_adv": l_adv.detach(), "kl_nat": l_nat.detach(),
                "w_adv": w_adv, "w_nat": w_nat}

    def state_dict(self) -> dict:
        """Plain numbers (one host sync, at checkpoint time)."""
        return {"w_nat": float(self.w_nat), "init_adv": _number(self.init_adv), "init_nat": _number(self.init_nat)}

    def load_state_dict(self, state: dict) -> None:
        self.w_nat = float(state.get("w_nat", 0.5))
        self.init_adv, self.init_nat = _number(state.get("init_adv")), _number(state.get("init_nat"))


def _number(v: float | torch.Tensor | None) -> float | None:
    return None if v is None else float(v)
