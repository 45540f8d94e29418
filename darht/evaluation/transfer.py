"""Adversarial transferability (paper section 4.1) and low-transferability teacher selection.

Definitions (counted over the examples every model involved classifies correctly, clean):
- transfer rate source -> target = #(x' fools source and target) / #(x' fools source), x' crafted
  on the source (white-box, default PGD);
- recovery of the student w.r.t. teacher j = #(x' fools teacher j but not the student) /
  #(x' fools teacher j), x' crafted on the student: how often the student is right where the
  teacher is wrong (the paper's "27.05% of examples the ViT-B-16 misclassified were correctly
  classified by the student").
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import nn

from darht.registry import ATTACKS


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device)
    return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                      for i in range(0, len(x), batch_size)])


def common_correct(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Mask of the examples every model classifies correctly."""
    mask = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for m in models:
        m.eval()
        mask &= _correct(m, x, y, batch_size)
    return mask


def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, eps: float, batch_size: int,
          **kw) -> torch.Tensor:
    from darht.models import is_randomized

    fn: Callable = ATTACKS.get(attack)
    if not is_randomized(model):
        kw.pop("eot", None)  # a deterministic model gives the same gradient on every pass
    if len(x) == 0:
        return x.clone()
    return torch.cat([fn(model, x[i:i + batch_size], y[i:i + batch_size], eps=eps, **kw)
                      for i in range(0, len(x), batch_size)])


def _rates(fooled_src: torch.Tensor, fooled_tgt: torch.Tensor) -> float | None:
    n = int(fooled_src.sum())
    return None if n == 0 else int((fooled_src & fooled_tgt).sum()) / n


def student_transfer(student: nn.Module, teachers: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                     attack: str = "pgd", eps: float = 8 / 255, n: int | None = 1000, batch_size: int = 256,
                     attack_args: dict | None = None) -> dict:
    """Transfer of student-crafted examples to each teacher, and the student's recovery rates."""
    keep = common_correct(list(teachers.values()), x, y, batch_size).nonzero().flatten()
    if n is not None:
        keep = keep[:n]
    xs, ys = x[keep], y[keep]
    x_adv = craft(student, xs, ys, attack, eps, batch_size, **(attack_args or {}))
    fooled_s = ~_correct(student, x_adv, ys, batch_size)
    out = {"examples": len(keep), "student_fooled": int(fooled_s.sum()), "teachers": {}}
    for name, t in teachers.items():
        fooled_t = ~_correct(t, x_adv, ys, batch_size)
        out["teachers"][name] = {
            "transfer_rate": _rates(fooled_s, fooled_t),
            "teacher_fooled": int(fooled_t.sum()),
            "both_fooled": int((fooled_s & fooled_t).sum()),
            "student_recovery": _rates(fooled_t, ~fooled_s),
        }
    rates = [v["transfer_rate"] for v in out["teachers"].values() if v["transfer_rate"] is not None]
    out["mean_transfer_rate"] = sum(rates) / len(rates) if rates else None
    return out


def transfer_matrix(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                    eps: float = 8 / 255, n: int | None = 1000, batch_size: int = 256,
                    attack_args: dict | None = None) -> dict:
    """M[src][tgt] = transfer rate of examples crafted on src to tgt (diagonal: 1 where defined)."""
    names = list(models)
    keep = common_correct(list(models.values()), x, y, batch_size).nonzero().flatten()
    if n is not None:
        keep = keep[:n]
    xs, ys = x[keep], y[keep]
    fooled: dict[str, dict[str, torch.Tensor]] = {}
    for src in names:
        x_adv = craft(models[src], xs, ys, attack, eps, batch_size, **(attack_args or {}))
        fooled[src] = {tgt: ~_correct(models[tgt], x_adv, ys, batch_size) for tgt in names}
    matrix = {s: {t: _rates(fooled[s][s], fooled[s][t]) for t in names} for s in names}
    return {"examples": len(keep), "models": names, "matrix": matrix,
            "fooled_self": {s: int(fooled[s][s].sum()) for s in names}}


def select_teachers(matrix: dict[str, dict[str, float | None]], j: int) -> dict:
    """The j-subset with the lowest mean pairwise (symmetrised) transfer rate; exhaustive search."""
    names = list(matrix)

    def pair(a: str, b: str) -> float:
        vals = [v for v in (matrix[a][b], matrix[b][a]) if v is not None]
        return sum(vals) / len(vals) if vals else 1.0  # unknown transfer counts as the worst case

    scored = []
    for combo in itertools.combinations(names, j):
        pairs = list(itertools.combinations(combo, 2))
        score = sum(pair(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0
        scored.append((score, combo))
    scored.sort(key=lambda s: (s[0], s[1]))
    return {"selected": list(scored[0][1]), "mean_pairwise_transfer": scored[0][0],
            "ranking": [{"teachers": list(c), "mean_pairwise_transfer": s} for s, c in scored]}
