"""Per-epoch validation on the held-out split, and the checkpoint choice it drives."""

from __future__ import annotations

import torch
from torch import nn

from darht.evaluation.spec import DEFAULT_EOT, device_batch, judge, run_attack
from darht.evaluation.verdict import is_randomized, score
from darht.registry import ATTACKS


def is_better(val: dict, best: dict, select_by: str = "robust") -> bool:
    """Checkpoint choice: higher validation robust accuracy, ties -> higher clean accuracy (or the
    other way round with select_by="clean", for natural models); an exact tie keeps the earlier epoch."""
    if best.get("val_robust") is None:
        return True
    keys = ("val_robust", "val_clean") if select_by == "robust" else ("val_clean", "val_robust")
    return tuple(val[k] for k in keys) > tuple(best[k] for k in keys)


def validate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, *, eps: float, steps: int,
             batch_size: int, device: torch.device, eot: int | None = None,
             draws: int = 20) -> tuple[float, float, int]:
    """(#correct clean, #correct under `attack` and clean (per-example minimum), #examples).

    `x` may be uint8 (the split as stored): each batch moves as uint8 and is converted on the
    device (`device_batch`), bit-identical to converting the whole split first.

    A deterministic model: counts of 0/1 verdicts, one pass each. A randomized one (says so, or
    its outputs vary): EOT `eot` (default 20) and the verdict rule over `draws` predictions, so
    the counts are expected numbers of correct predictions.
    """
    # the attack's own name for its iteration count (registry metadata `steps`: steps, n_iter, ...)
    steps_key = ATTACKS.meta(attack).get("steps")
    kw = {steps_key: steps} if steps_key and steps > 0 else {}
    was_training = model.training
    model.eval()
    parts: list[torch.Tensor] = []  # per batch [#clean, #robust] on the device: one sync at the end
    try:
        randomized = is_randomized(model, device_batch(x[:batch_size], device))
        key = ATTACKS.meta(attack).get("eot")
        if randomized and key:
            kw[key] = DEFAULT_EOT if eot is None else eot
        n_draws = draws if randomized else 1
        for i in range(0, len(y), batch_size):
            xb, yb = device_batch(x[i:i + batch_size], device), y[i:i + batch_size].to(device)
            ok = score(model, xb, yb, n_draws, batch_size)[0]
            ok_adv = judge(model, run_attack(attack, model, xb, yb, eps, kw, randomized), yb, n_draws,
                           batch_size)[0]
            parts.append(torch.stack([ok.sum(), torch.minimum(ok, ok_adv).sum()]).float())
    finally:
        model.train(was_training)
    if not parts:
        return 0.0, 0.0, len(y)
    clean, robust = torch.stack(parts).cpu().double().sum(0).tolist()  # float64 on the host only
    return clean, robust, len(y)
