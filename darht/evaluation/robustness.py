"""Clean, robust and W-Robust accuracy of a model under a set of attacks, over seeded trials.

Every example of the evaluation pool is attacked once per attack; trials are seeded subsets of
the pool (disjoint whenever n * trials fits in it) whose accuracies are means of the per-example
results. Examples never classified correctly clean count as non-robust and are never attacked.

Verdict (darht.evaluation.verdict): a deterministic model is judged by its one prediction; a
randomized one by the fraction of `draws` fresh predictions that are correct at the attack's
point (its expected accuracy; "strict" = all draws correct), attacked with EOT, and every attack
hands back its strongest point for every example. "worst" is the per-example minimum over the
attacks. The record keeps the per-example results, so records can be compared pairwise.
"""

from __future__ import annotations

import math
import time
import torch
from torch import nn
from tqdm import tqdm

from darht.errors import DarhtError
from darht.evaluation.checks import sanity_checks
from darht.evaluation.spec import (EvalSpec, Resolved, attack_kwargs, device_batch, ieee_fp32, judge, resolve,
                                   run_attack, trial_indices)
from darht.evaluation.sweep import eot_sweep
from darht.evaluation.verdict import is_randomized, score
from darht.models.student import unwrap_student
from darht.registry import ATTACKS


def per_example_results(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: EvalSpec,
                        device: torch.device, res: Resolved) -> dict[str, dict[str, torch.Tensor]]:
    """Per-example scores [N]: 'robust' (fraction of draws correct; 0/1 for a deterministic model)
    and 'strict' (all draws correct) for 'clean', every attack and 'worst' (per-example minimum
    over the attacks), plus 'own' (pyautoattack's verdict, ensembles on randomized models only)."""
    model.eval()
    bs = spec.batch_size
    # per batch: x may be a uint8 pool, converted on the device one batch at a time (same batches
    # and RNG stream as scoring the whole pool at once)
    scores = [score(model, device_batch(x[i:i + bs], device), y[i:i + bs].to(device), res.draws, bs)
              for i in range(0, len(x), bs)]
    clean = torch.cat([c for c, _ in scores]).cpu() if scores else torch.zeros(0)
    clean_strict = torch.cat([s for _, s in scores]).cpu() if scores else torch.zeros(0, dtype=torch.bool)
    robust, strict, own = {"clean": clean}, {"clean": clean_strict}, {}
    todo = (clean > 0).nonzero().flatten()   # examples never classified correctly are not attacked
    batches = math.ceil(len(todo) / spec.batch_size) if len(todo) else 0
    bar = tqdm(total=batches * len(res.attacks), desc="attacks", disable=not spec.progress, leave=False)
    for name in res.attacks:
        kw = attack_kwargs(name, spec, res)
        r, s = torch.zeros(len(x)), torch.zeros(len(x), dtype=torch.bool)
        verdict = None
        for i in range(0, len(todo), spec.batch_size):
            idx = todo[i:i + spec.batch_size]
            xb, yb = device_batch(x[idx], device), y[idx].to(device)
            out = run_attack(name, model, xb, yb, spec.eps, kw, res.randomized)
            fr, st, _ = judge(model, out, yb, res.draws, spec.batch_size)
            r[idx], s[idx] = fr.cpu(), st.cpu()
            if out.verdict is not None:
                verdict = torch.zeros(len(x), dtype=torch.bool) if verdict is None else verdict
                verdict[idx] = out.verdict.cpu()
            bar.set_postfix_str(name)
            bar.update(1)
        robust[name], strict[name] = r, s
        if verdict is not None:
            own[name] = verdict
    bar.close()
    if res.attacks:
        robust["worst"] = torch.stack([robust[a] for a in res.attacks]).min(0).values
        strict["worst"] = torch.stack([strict[a] for a in res.attacks]).all(0)
    return {"robust": robust, "strict": strict, "own": own}


class _FloatBatches:
    """x as the EOT sweep indexes it (`len(x)`, `x[idx]`), each indexed batch converted to float on
    its own: the sweep (darht.evaluation.sweep) takes float images, and the pool stays uint8."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx) -> torch.Tensor:
        return device_batch(self.x[idx], self.x.device)


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


def _evaluate_face(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: EvalSpec, device: torch.device,
                   res: Resolved, subsets: list[torch.Tensor], index: torch.Tensor) -> dict:
    """One face of a model (as it is now) on the pool x: summaries, trials and per-example results."""
    per = per_example_results(model, x, y, spec, device, res)
    record = summarize(per["robust"], subsets)
    strict = summarize(per["strict"], subsets)
    record["summary"]["strict"] = strict["summary"]["robust"]
    record["summary"]["clean_strict"] = strict["summary"]["clean"]
    for row, srow in zip(record["trials"], strict["trials"]):
        row["strict"] = srow["robust"]

    def col(t: torch.Tensor) -> list:
        return [round(v, 4) for v in t.tolist()] if t.dtype.is_floating_point else [int(v) for v in t.tolist()]

    record["examples"] = {
        "index": index.tolist(), "clean": col(per["robust"]["clean"]), "clean_strict": col(per["strict"]["clean"]),
        "robust": {k: col(v) for k, v in per["robust"].items() if k != "clean"},
        "strict": {k: col(v) for k, v in per["strict"].items() if k != "clean"},
    }
    if per["own"]:  # pyautoattack's own verdict, next to ours
        record["examples"]["pyautoattack_verdict"] = {k: col(v) for k, v in per["own"].items()}
        record["summary"]["pyautoattack_verdict"] = {k: v.float().mean().item() for k, v in per["own"].items()}
    record.update({"randomized": res.randomized, "eot": res.eot, "draws": res.draws,
                   "attacks": list(res.attacks),
                   "attack_args": {k: attack_kwargs(k, spec, res) for k in res.attacks},
                   "examples_attacked": int((per["robust"]["clean"] > 0).sum().item())})
    return record


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: EvalSpec,
             device: torch.device) -> dict:
    """Run the evaluation and return a JSON-able record (without model/data descriptions).

    x: images [N, C, H, W], uint8 (0..255, e.g. `ImageData.x`) or float in [0, 1]; uint8 is
    converted to float one batch at a time on `device` (bit-identical to passing `float_x()`).
    A randomized model is judged by the verdict rule (darht.evaluation.verdict) and attacked with
    EOT; a DARHT student in MC mode is evaluated a second time with dropout off (`faces`).
    On CUDA it runs in exact fp32 (no TF32: `ieee_fp32`).
    """
    with ieee_fp32(device):
        return _evaluate(model, x, y, spec, device)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: EvalSpec,
              device: torch.device) -> dict:
    for name in spec.attacks or []:
        ATTACKS.get(name)  # unknown names fail before any work
    if not 0 <= spec.eps <= 1:
        raise DarhtError(f"eps must be in [0, 1] (pixel units), got {spec.eps}")
    if spec.draws < 1 or (spec.eot is not None and spec.eot < 1):
        raise DarhtError("draws and eot must be >= 1")
    start = time.time()
    model = model.to(device).eval()
    index = torch.arange(len(x))
    if spec.pool is not None and spec.pool < len(x):
        index = torch.randperm(len(x), generator=torch.Generator().manual_seed(spec.seed - 1))[: spec.pool]
        x, y = x[index], y[index]
    subsets, disjoint = trial_indices(len(x), spec.n, spec.trials, spec.seed)
    pool = torch.unique(torch.cat(subsets))          # attack each example of the union once
    remap = torch.full((len(x),), -1, dtype=torch.long)
    remap[pool] = torch.arange(len(pool))
    subsets = [remap[s] for s in subsets]
    xp, yp = x[pool], y[pool]
    probe = device_batch(xp[: spec.batch_size], device)
    with torch.no_grad():
        num_classes = int(model(probe[:1]).shape[1]) if len(probe) else 0
    res = resolve(spec, is_randomized(model, probe), num_classes)
    record = _evaluate_face(model, xp, yp, spec, device, res, subsets, index[pool])
    if res.randomized and spec.eot_sweep:
        record["eot_sweep"] = eot_sweep(model, _FloatBatches(xp), yp, spec, device, res, record)
    record["trial_positions"] = [s.tolist() for s in subsets]
    record["trials_disjoint"] = disjoint
    record["checks"] = sanity_checks(model, probe, yp[: spec.batch_size], record, device, res=res)
    student = unwrap_student(model)
    if spec.faces and res.randomized and student is not None and not student.deterministic:
        student.set_deterministic(True)
        try:  # the face RobustBench would accept: dropout off, a deterministic model
            det = Resolved(list(res.attacks), False, 1, 1, False)
            face = _evaluate_face(model, xp, yp, spec, device, det, subsets, index[pool])
            face["checks"] = sanity_checks(model, probe, yp[: spec.batch_size], face, device, res=det)
        finally:
            student.set_deterministic(False)
        record["face"] = "mc"
        record["faces"] = {"deterministic": face}
    record.update({
        "eps": spec.eps, "n": len(subsets[0]), "trials_count": spec.trials, "pool_limit": spec.pool,
        "seed": spec.seed, "pool": len(pool), "wall_time_s": round(time.time() - start, 3),
    })
    return record
