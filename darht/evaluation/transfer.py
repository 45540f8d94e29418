"""Adversarial transferability (paper section 4.1) and low-transferability teacher selection.

Definitions, with x' crafted on the source (white-box, default PGD):
- transfer rate source -> target = #(x' fools source and target) / #(x' fools source);
- recovery of the student w.r.t. teacher j = #(x' fools teacher j but not the student) /
  #(x' fools teacher j), x' crafted on the student: how often the student is right where the
  teacher is wrong (the paper's "27.05% of examples the ViT-B-16 misclassified were correctly
  classified by the student").

Examples: those every teacher (for the matrix: every model) classifies correctly clean; `n` of
them are drawn at random with `torch.Generator().manual_seed(seed)` (sorted; their indices into
x are recorded). For the student rates, the examples the student already misclassifies clean
are counted (`student_wrong_clean`) and left out of the main rates, since there the student is
"fooled" without any attack; the rates over all examples are given under `all_examples`.

Randomized models (MC dropout, ...; `darht.evaluation.verdict`) are judged by the verdict rule:
"x' fools the model" is the expected value 1 - (fraction of `draws` stochastic predictions
correct), a count is the sum of these expectations, and a rate a ratio of expected counts; two
models' predictions are independent, so "fools both" has expectation the product. For a
deterministic model this is the one 0/1 prediction, and its counts are integers. "Correct clean"
(to select examples) is a majority of the draws (fraction > 0.5): requiring all draws correct
would drop, for a model with some prediction noise, examples it classifies correctly almost
always, and bias the sample towards easy examples. Examples are crafted on a randomized source
with EOT (`eot` = 20 gradient draws unless attack_args sets it) when the attack takes it.

Images x may be uint8 (0..255, as data sets store them) or float [0, 1], on any device (the models'
device: nothing here moves them); uint8 is converted to float one batch at a time, by
`ImageData.float_x`'s formula, so a whole split never exists as float and the results are the same.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Callable

import torch
from torch import nn

from darht.data.base import to_float
from darht.errors import DarhtError
from darht.evaluation.verdict import DEFAULT_DRAWS, is_randomized, score
from darht.registry import ATTACKS

DEFAULT_EOT = 20
_PROBE = 16  # examples of the probe batch on which two forward passes must agree (deterministic model)


def _randomized(model: nn.Module, x: torch.Tensor) -> bool:
    """The verdict rule's test (says so, or two eval-mode passes on a probe batch differ); RNG untouched."""
    model.eval()
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        return is_randomized(model, to_float(x[:_PROBE]))


def _frac_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, randomized: bool, draws: int,
                  batch_size: int) -> torch.Tensor:
    """Fraction of the model's predictions on x that are correct [N] (float64; 0/1 if deterministic)."""
    model.eval()
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    # one batch at a time (uint8 converted per batch): the same batches and RNG stream as one call
    return torch.cat([score(model, to_float(x[i:i + batch_size]), y[i:i + batch_size], draws if randomized else 1,
                            batch_size)[0] for i in range(0, len(x), batch_size)]).double()


def common_correct(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
                   draws: int = DEFAULT_DRAWS) -> torch.Tensor:
    """Mask of the examples every model classifies correctly (randomized: a majority of `draws`)."""
    return _all_correct(models, [_randomized(m, x) for m in models], x, y, draws, batch_size)


def _all_correct(models: list[nn.Module], randomized: list[bool], x: torch.Tensor, y: torch.Tensor, draws: int,
                 batch_size: int) -> torch.Tensor:
    mask = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for m, r in zip(models, randomized):
        mask &= _frac_correct(m, x, y, r, draws, batch_size) > 0.5
    return mask


def sample(mask: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices (CPU, long) of `n` of the True entries of mask drawn at random with `seed`
    (all of them if n is None or there are fewer)."""
    pool = mask.nonzero().flatten().cpu()
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return pool[perm[:n] if n is not None else perm].sort().values


def _eot_keyword(attack: str, fn: Callable) -> str | None:
    """The attack's EOT keyword: its registry metadata, else an `eot` parameter; None if neither."""
    meta = ATTACKS.meta(attack)
    if "eot" in meta:
        return meta["eot"]
    try:
        return "eot" if "eot" in inspect.signature(fn).parameters else None
    except (TypeError, ValueError):
        return None


def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, eps: float, batch_size: int,
          randomized: bool | None = None, default_eot: int = DEFAULT_EOT, **kw) -> torch.Tensor:
    """Adversarial examples of x on `model`; on a randomized model with EOT (`default_eot` draws
    unless kw sets the attack's EOT keyword), on a deterministic one without (every pass gives the same
    gradient)."""
    fn: Callable = ATTACKS.get(attack)
    if randomized is None:
        randomized = _randomized(model, x)
    if randomized:
        key = _eot_keyword(attack, fn)
        if key is not None:
            kw.setdefault(key, default_eot)
    else:
        kw.pop(_eot_keyword(attack, fn) or "eot", None)
        kw.pop("eot", None)
    if len(x) == 0:
        return to_float(x).clone()
    out = []
    for i in range(0, len(x), batch_size):
        xa = fn(model, to_float(x[i:i + batch_size]), y[i:i + batch_size], eps=eps, **kw)
        if not isinstance(xa, torch.Tensor):
            raise DarhtError(f"attack '{attack}' returns {type(xa).__name__}, transfer needs adversarial images")
        out.append(xa.detach())
    return torch.cat(out)


def _used_eot(attack: str, randomized: bool, attack_args: dict | None) -> int | None:
    """The EOT draws `craft` passes for this source (None: no EOT)."""
    if not randomized:
        return None
    key = _eot_keyword(attack, ATTACKS.get(attack))
    return None if key is None else (attack_args or {}).get(key, DEFAULT_EOT)


def _count(fooled: torch.Tensor, exact: bool) -> int | float:
    return int(round(float(fooled.sum()))) if exact else float(fooled.sum())


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float | None:
    d = float(den.sum())
    return None if d == 0 else float(num.sum()) / d


def _check(n: int | None, draws: int) -> None:
    if n is not None and n < 1:
        raise DarhtError(f"n must be >= 1 (or None for all examples), got {n}")
    if draws < 1:
        raise DarhtError(f"draws must be >= 1, got {draws}")


def _student_rates(fs: torch.Tensor, ft: dict[str, torch.Tensor], rs: bool, rt: dict[str, bool]) -> dict:
    """Counts and rates over the examples given: fs / ft[name] = P(x' fools student / teacher)."""
    out: dict = {"examples": len(fs), "student_fooled": _count(fs, not rs), "teachers": {}}
    for name, f in ft.items():
        out["teachers"][name] = {
            "transfer_rate": _ratio(fs * f, fs),
            "teacher_fooled": _count(f, not rt[name]),
            "both_fooled": _count(fs * f, not (rs or rt[name])),
            "student_recovery": _ratio(f * (1 - fs), f),
        }
    rates = [v["transfer_rate"] for v in out["teachers"].values() if v["transfer_rate"] is not None]
    out["mean_transfer_rate"] = sum(rates) / len(rates) if rates else None
    return out


def student_transfer(student: nn.Module, teachers: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                     attack: str = "pgd", eps: float = 8 / 255, n: int | None = 1000, batch_size: int = 256,
                     attack_args: dict | None = None, seed: int = 0, draws: int = DEFAULT_DRAWS) -> dict:
    """Transfer of student-crafted examples to each teacher, and the student's recovery rates.

    `n` examples (all if None) are drawn with `seed` among those every teacher classifies
    correctly clean; the main numbers (examples, student_fooled, teachers, mean_transfer_rate)
    are over those of them the student also classifies correctly clean (a majority of `draws`
    for a randomized student); `all_examples` has the same fields over all of them.
    Fields: seed, draws, index (the sampled indices into x), pool (how many examples every
    teacher classifies correctly), student_wrong_clean (+ _index), randomized, eot (EOT draws
    used to craft on the student; None: none). Counts on randomized models are expected values.
    """
    _check(n, draws)
    ATTACKS.get(attack)  # an unknown name fails before any work
    rt = {name: _randomized(t, x) for name, t in teachers.items()}
    mask = _all_correct(list(teachers.values()), list(rt.values()), x, y, draws, batch_size)
    keep = sample(mask, n, seed)
    xs, ys = x[keep.to(x.device)], y[keep.to(y.device)]
    rs = _randomized(student, x)
    right = (_frac_correct(student, xs, ys, rs, draws, batch_size) > 0.5).cpu()
    x_adv = craft(student, xs, ys, attack, eps, batch_size, randomized=rs, **(attack_args or {}))
    fs = (1 - _frac_correct(student, x_adv, ys, rs, draws, batch_size)).cpu()
    ft = {name: (1 - _frac_correct(t, x_adv, ys, rt[name], draws, batch_size)).cpu() for name, t in teachers.items()}
    out = _student_rates(fs[right], {k: v[right] for k, v in ft.items()}, rs, rt)
    return {
        "examples": out["examples"], "student_wrong_clean": int((~right).sum()),
        "student_fooled": out["student_fooled"], "teachers": out["teachers"],
        "mean_transfer_rate": out["mean_transfer_rate"],
        "all_examples": _student_rates(fs, ft, rs, rt),
        "seed": seed, "draws": draws, "pool": int(mask.sum()), "index": keep.tolist(),
        "student_wrong_clean_index": keep[~right].tolist(),
        "randomized": {"student": rs, "teachers": rt},
        "eot": _used_eot(attack, rs, attack_args),
    }


def transfer_matrix(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                    eps: float = 8 / 255, n: int | None = 1000, batch_size: int = 256,
                    attack_args: dict | None = None, seed: int = 0, draws: int = DEFAULT_DRAWS) -> dict:
    """M[src][tgt] = transfer rate of examples crafted on src to tgt (diagonal: 1 where defined).

    Over `n` examples (all if None) drawn with `seed` among those every model classifies
    correctly clean; fooled_self[src] = (expected) number of them x' crafted on src fools src;
    fooled[src][tgt] = per example (in `index` order), whether (the expected fraction of draws of
    a randomized model) x' crafted on src fools tgt: what a paired test of two rates needs.
    """
    _check(n, draws)
    ATTACKS.get(attack)
    names = list(models)
    rand = {s: _randomized(models[s], x) for s in names}
    mask = _all_correct(list(models.values()), list(rand.values()), x, y, draws, batch_size)
    keep = sample(mask, n, seed)
    xs, ys = x[keep.to(x.device)], y[keep.to(y.device)]
    matrix: dict[str, dict[str, float | None]] = {}
    fooled_self: dict[str, int | float] = {}
    per_example: dict[str, dict[str, list[float]]] = {}
    for src in names:
        x_adv = craft(models[src], xs, ys, attack, eps, batch_size, randomized=rand[src], **(attack_args or {}))
        fooled = {t: (1 - _frac_correct(models[t], x_adv, ys, rand[t], draws, batch_size)).cpu() for t in names}
        fs = fooled[src]
        fooled_self[src] = _count(fs, not rand[src])
        per_example[src] = {t: [round(float(v), 6) for v in f] for t, f in fooled.items()}
        # the diagonal is 1 by definition; for a randomized src, "fooled twice" on independent
        # draws would give sum(f^2) / sum(f) < 1, which is not a transfer rate
        matrix[src] = {t: (None if float(fs.sum()) == 0 else 1.0) if t == src else _ratio(fs * fooled[t], fs)
                       for t in names}
    return {"examples": len(keep), "models": names, "matrix": matrix, "fooled_self": fooled_self,
            "fooled": per_example,
            "seed": seed, "draws": draws, "pool": int(mask.sum()), "index": keep.tolist(), "randomized": rand,
            "eot": {s: _used_eot(attack, rand[s], attack_args) for s in names}}


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
