"""Clean, robust and W-Robust accuracy of a model under a set of attacks, over seeded trials.

Every example of the evaluation pool is attacked once per attack; trials are seeded random
subsets of the pool whose accuracies are means of the per-example results. That gives the
paper's "30 trials x 1000 examples" for the cost of attacking the union of the subsets once.
Examples misclassified clean count as non-robust and are never attacked. Robust accuracy under
"worst" is per example: robust only if it survives every attack.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from darht.errors import DarhtError
from darht.registry import ATTACKS


@dataclass
class EvalSpec:
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd", "cw-inf", "apgd-ce", "square"])
    eps: float = 8 / 255
    n: int | None = 1000             # examples per trial (None: the whole split)
    pool: int | None = None          # draw the trials from a seeded random pool of this many test
                                     # examples (None: the whole split); bounds the attack cost
    trials: int = 1
    seed: int = 0
    batch_size: int = 256
    attack_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    eot: int = 1                     # gradient samples per step for in-house attacks (randomized models)
    progress: bool = True


def trial_indices(pool: int, n: int | None, trials: int, seed: int) -> list[torch.Tensor]:
    """Seeded subsets of range(pool): trial t draws min(n, pool) examples without replacement."""
    n = pool if n is None else min(n, pool)
    if n == pool and trials == 1:
        return [torch.arange(pool)]
    return [torch.randperm(pool, generator=torch.Generator().manual_seed(seed + t))[:n] for t in range(trials)]


def _attack_kwargs(name: str, spec: EvalSpec, randomized: bool) -> dict:
    from darht.attacks import PAPER_DEFAULTS

    kw = dict(PAPER_DEFAULTS.get(name, {}))
    kw.update(spec.attack_args.get(name, {}))
    # EOT averages gradients over random forward passes: only a randomized model needs it (for a
    # deterministic one every pass gives the same gradient, so it would only multiply the cost).
    if spec.eot > 1 and randomized:
        if name in ("pgd", "cw-inf", "fgsm"):
            kw.setdefault("eot", spec.eot)
        elif name in ("apgd-ce", "apgd-dlr", "apgd-t"):
            kw.setdefault("eot_iter", spec.eot)
    return kw


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def per_example_results(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: EvalSpec,
                        device: torch.device, randomized: bool = False) -> dict[str, torch.Tensor]:
    """Boolean masks [N]: 'clean' and one per attack (robust = correct on the attacked input)."""
    model.eval()
    clean = _predict(model, x, spec.batch_size, device) == y
    results = {"clean": clean}
    todo = clean.nonzero().flatten()           # misclassified clean examples are not attacked
    batches = math.ceil(len(todo) / spec.batch_size) if len(todo) else 0
    bar = tqdm(total=batches * len(spec.attacks), desc="attacks", disable=not spec.progress, leave=False)
    for name in spec.attacks:
        attack = ATTACKS.get(name)
        kw = _attack_kwargs(name, spec, randomized)
        robust = torch.zeros_like(clean)
        for i in range(0, len(todo), spec.batch_size):
            idx = todo[i:i + spec.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            x_adv = attack(model, xb, yb, eps=spec.eps, **kw)
            if (x_adv - xb).abs().max().item() > spec.eps + 1e-5:
                raise RuntimeError(f"attack {name} left the eps ball")  # a bug, not user input
            with torch.no_grad():
                robust[idx] = (model(x_adv).argmax(1) == yb).cpu()
            bar.set_postfix_str(name)
            bar.update(1)
        results[name] = robust
    bar.close()
    if spec.attacks:
        worst = clean.clone()
        for name in spec.attacks:
            worst &= results[name]
        results["worst"] = worst
    return results


def summarize(results: dict[str, torch.Tensor], subsets: list[torch.Tensor]) -> dict:
    """Per-trial accuracies and their mean/std: clean, robust and W-Robust per attack."""
    names = [k for k in results if k != "clean"]
    trials = []
    for idx in subsets:
        clean = results["clean"][idx].float().mean().item()
        row = {"clean": clean, "robust": {}, "w_robust": {}}
        for k in names:
            r = results[k][idx].float().mean().item()
            row["robust"][k] = r
            row["w_robust"][k] = (clean + r) / 2
        trials.append(row)

    def stats(values: list[float]) -> dict:
        t = torch.tensor(values, dtype=torch.float64)
        return {"mean": t.mean().item(), "std": t.std().item() if len(values) > 1 else 0.0}

    summary = {"clean": stats([t["clean"] for t in trials]), "robust": {}, "w_robust": {}}
    for k in names:
        summary["robust"][k] = stats([t["robust"][k] for t in trials])
        summary["w_robust"][k] = stats([t["w_robust"][k] for t in trials])
    return {"trials": trials, "summary": summary}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: EvalSpec,
             device: torch.device) -> dict:
    """Run the evaluation and return a JSON-able record (without model/data descriptions)."""
    from darht.evaluation.checks import sanity_checks
    from darht.models import is_randomized

    for name in spec.attacks:
        ATTACKS.get(name)  # unknown names fail before any work
    if spec.eps < 0:
        raise DarhtError(f"eps must be >= 0, got {spec.eps}")
    start = time.time()
    model = model.to(device).eval()
    if spec.pool is not None and spec.pool < len(x):
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(spec.seed - 1))[: spec.pool]
        x, y = x[keep], y[keep]
    subsets = trial_indices(len(x), spec.n, spec.trials, spec.seed)
    pool = torch.unique(torch.cat(subsets))          # attack each example of the union once
    remap = torch.full((len(x),), -1, dtype=torch.long)
    remap[pool] = torch.arange(len(pool))
    randomized = is_randomized(model)
    results = per_example_results(model, x[pool], y[pool], spec, device, randomized)
    record = summarize(results, [remap[s] for s in subsets])
    record["checks"] = sanity_checks(model, x[pool][: spec.batch_size], y[pool][: spec.batch_size],
                                     record["summary"], device, randomized=randomized, eot=spec.eot)
    record.update({
        "eps": spec.eps, "n": len(subsets[0]), "trials_count": spec.trials, "pool_limit": spec.pool,
        "seed": spec.seed, "attacks": list(spec.attacks), "randomized": randomized,
        "attack_args": {k: _attack_kwargs(k, spec, randomized) for k in spec.attacks},
        "examples_attacked": int(results["clean"].sum().item()), "pool": len(pool),
        "wall_time_s": round(time.time() - start, 3),
    })
    return record


def markdown_table(record: dict) -> str:
    """The paper's layout: one row per attack with clean, robust and W-Robust accuracy (%)."""
    s = record["summary"]
    pm = record.get("trials_count", 1) > 1

    def fmt(st: dict) -> str:
        return f"{100 * st['mean']:.2f}" + (f" ± {100 * st['std']:.2f}" if pm else "")

    lines = ["| attack | clean (%) | robust (%) | W-Robust (%) |", "|---|---|---|---|"]
    for k in s["robust"]:
        lines.append(f"| {k} | {fmt(s['clean'])} | {fmt(s['robust'][k])} | {fmt(s['w_robust'][k])} |")
    if not s["robust"]:
        lines.append(f"| (none) | {fmt(s['clean'])} | | |")
    return "\n".join(lines)
