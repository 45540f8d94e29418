"""What an evaluation runs, resolved once: the spec (`EvalSpec`), its defaults for a randomized
model (`resolve`), the seeded trials, and one attack's run and verdict on one batch (`run_attack`,
`judge`). Shared by the evaluation (darht.evaluation.robustness), the EOT sweep
(darht.evaluation.sweep) and validation during training (darht.engine.validate).

Images may be given as uint8 (0..255, as data sets store them) or float [0, 1]; `device_batch`
converts one batch at a time on the device, so a whole split never exists as float.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from darht.attacks.core import AttackOutput
from darht.data.base import to_float
from darht.evaluation.verdict import DEFAULT_DRAWS, score
from darht.registry import ATTACKS

DEFAULT_ATTACKS = ["fgsm", "pgd", "cw-inf", "apgd-ce", "square"]
RANDOMIZED_EXTRA = ["apgd-dlr"]      # added to the defaults for a randomized model (AutoAttack-rand's pair)
DEFAULT_EOT = 20                     # EOT for a randomized model when none is set (AutoAttack-rand's 20)


@dataclass
class EvalSpec:
    attacks: list[str] | None = None # None: DEFAULT_ATTACKS (+ RANDOMIZED_EXTRA for a randomized model)
    eps: float = 8 / 255
    n: int | None = 1000             # examples per trial (None: the whole split)
    pool: int | None = None          # draw the trials from a seeded random pool of this many test
                                     # examples (None: the whole split); bounds the attack cost
    trials: int = 1
    seed: int = 0
    batch_size: int = 256
    attack_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    eot: int | None = None           # EOT samples per gradient step (randomized models; None: 20)
    draws: int = DEFAULT_DRAWS       # stochastic predictions judging each example (randomized models)
    eot_sweep: list[int] = field(default_factory=list)  # e.g. [1, 5, 20, 50]: convergence evidence
    eot_sweep_attacks: list[str] | None = None  # None: the in-house EOT attacks (fgsm, pgd, cw-inf) listed
    faces: bool = True               # a DARHT student in MC mode is also evaluated with dropout off
    progress: bool = True


@dataclass
class Resolved:
    """What an evaluation of one model actually runs: the spec's open choices settled for it."""
    attacks: list[str]
    randomized: bool
    eot: int                         # 1 for a deterministic model
    draws: int                       # 1 for a deterministic model
    eot_explicit: bool


def device_batch(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A batch of images on `device` as float [0, 1]: uint8 moves as uint8 (a quarter of the bytes)
    and is converted there by `ImageData.float_x`'s formula (`darht.data.base.to_float`), so the
    values are bit-identical to converting the whole split first; float passes through."""
    return to_float(x.to(device))


def resolve(spec: EvalSpec, randomized: bool, num_classes: int) -> Resolved:
    attacks = list(spec.attacks) if spec.attacks is not None else list(DEFAULT_ATTACKS)
    if spec.attacks is None and randomized:
        attacks += [a for a in RANDOMIZED_EXTRA if num_classes >= (ATTACKS.meta(a).get("min_classes") or 2)]
    if not randomized:  # every pass gives the same output: one pass is exact and cheapest
        return Resolved(attacks, False, 1, 1, spec.eot is not None)
    return Resolved(attacks, True, DEFAULT_EOT if spec.eot is None else spec.eot, spec.draws,
                    spec.eot is not None)


def trial_indices(pool: int, n: int | None, trials: int, seed: int) -> tuple[list[torch.Tensor], bool]:
    """Seeded subsets of range(pool), each of min(n, pool) examples, and whether they are disjoint.

    Disjoint consecutive blocks of one seeded permutation whenever n * trials fits in the pool;
    otherwise trial t is its own seeded draw without replacement (overlapping: flagged).
    """
    n = pool if n is None else min(n, pool)
    if n == pool and trials == 1:
        return [torch.arange(pool)], True
    if n * trials <= pool:
        perm = torch.randperm(pool, generator=torch.Generator().manual_seed(seed))
        return [perm[t * n:(t + 1) * n] for t in range(trials)], True
    return [torch.randperm(pool, generator=torch.Generator().manual_seed(seed + t))[:n]
            for t in range(trials)], False


def attack_kwargs(name: str, spec: EvalSpec, res: Resolved, eot: int | None = None) -> dict:
    """The keyword arguments `name` is called with: paper defaults < user settings < EOT."""
    kw = dict(ATTACKS.meta(name).get("paper_defaults") or {})
    kw.update(spec.attack_args.get(name, {}))
    eot = res.eot if eot is None else eot
    key = ATTACKS.meta(name).get("eot")
    # a deterministic model gives the same gradient on every pass: EOT would only multiply the cost
    if key and res.randomized and eot > 1:
        kw.setdefault(key, eot)
    return kw


def run_attack(name: str, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, eps: float,
                kw: dict, randomized: bool) -> AttackOutput:
    strongest = ATTACKS.meta(name).get("strongest")
    if randomized and strongest is not None:
        out = strongest(model, xb, yb, eps=eps, **kw)
    else:
        out = AttackOutput([ATTACKS.get(name)(model, xb, yb, eps=eps, **kw)], [name])
    for c in out.candidates:
        if (c - xb).abs().max().item() > eps + 1e-5:
            raise RuntimeError(f"attack {name} left the eps ball")  # a bug, not user input
    return out


def judge(model: nn.Module, out: AttackOutput, yb: torch.Tensor, draws: int,
          batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score an attack's points by the verdict rule: (fraction of draws correct, all correct,
    the point judged per example).

    With several candidates per example, one set of draws picks the lowest-scoring candidate and
    a fresh set judges it, so the choice does not bias the reported number downwards.
    """
    chosen = out.candidates[0]
    if len(out.candidates) > 1:
        pick = torch.stack([score(model, c, yb, draws, batch_size)[0] for c in out.candidates]).argmin(0)
        chosen = torch.stack(out.candidates)[pick, torch.arange(len(yb), device=yb.device)]
    return (*score(model, chosen, yb, draws, batch_size), chosen)


@contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """On CUDA, exact fp32 matmuls and convolutions (no TF32) for the duration, then the previous
    settings: reported robustness comes from attacks and verdicts at full precision, whatever a
    training run chose (`tf32`). Elsewhere: nothing."""
    if torch.device(device).type != "cuda":
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, conv.allow_tf32)
    matmul.allow_tf32 = conv.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, conv.allow_tf32 = saved
