"""Convergence evidence for EOT: robust accuracy of a randomized model per EOT setting.

Each attack that takes EOT (by default the in-house ones: FGSM, PGD, CW-inf) is re-run on the same examples at every setting of `spec.eot_sweep`
and judged by the same verdict rule. "Stopped falling" means the last setting lowers robust
accuracy by no more than max(0.5 pp, 2 standard errors of the paired per-example difference)
against the one before it; otherwise a larger EOT may still find more (Athalye et al. 2018).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from darht.evaluation.spec import attack_kwargs, judge, run_attack
from darht.registry import ATTACKS

TOLERANCE = 0.005  # 0.5 percentage points


def stopped_falling(prev: torch.Tensor, last: torch.Tensor) -> tuple[bool, float, float]:
    """(converged?, mean drop, its standard error) from per-example scores at two settings."""
    d = prev.double() - last.double()
    n = len(d)
    drop = d.mean().item() if n else 0.0
    se = d.std().item() / math.sqrt(n) if n > 1 else 0.0
    return drop <= max(TOLERANCE, 2 * se), drop, se


def eot_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec, device: torch.device, res,
              record: dict) -> dict:
    """{"settings", "attacks": {name: {"robust": [acc per setting], "converged", "drop", "se"}}}."""
    settings = sorted({int(e) for e in spec.eot_sweep})
    clean = torch.tensor(record["examples"]["clean"])
    todo = (clean > 0).nonzero().flatten()
    out: dict = {"settings": settings, "attacks": {}}
    names = spec.eot_sweep_attacks
    if names is None:  # cheap by default: head-only draws make in-house EOT cost ~ EOT 1
        names = [a for a in res.attacks if ATTACKS.meta(a).get("eot") == "eot" and ATTACKS.meta(a).get("white_box")]
    for name in names:
        if not ATTACKS.meta(name).get("eot") or ATTACKS.meta(name).get("ensemble"):
            continue
        per_setting = []
        for eot in settings:
            kw = attack_kwargs(name, spec, res)
            kw[ATTACKS.meta(name)["eot"]] = eot  # the sweep's setting wins over any configured one
            r = torch.zeros(len(x))
            for i in range(0, len(todo), spec.batch_size):
                idx = todo[i:i + spec.batch_size]
                xb, yb = x[idx].to(device), y[idx].to(device)
                r[idx] = judge(model, run_attack(name, model, xb, yb, spec.eps, kw, True), yb, res.draws,
                               spec.batch_size)[0].cpu()
            per_setting.append(r)
        entry = {"robust": [v.mean().item() for v in per_setting]}
        if len(per_setting) >= 2:
            ok, drop, se = stopped_falling(per_setting[-2], per_setting[-1])
            entry.update(converged=ok, drop=drop, se=se)
        out["attacks"][name] = entry
    return out
