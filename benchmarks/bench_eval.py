"""Cost of the randomized evaluation (EOT, several draws) relative to the deterministic one.

    python benchmarks/bench_eval.py [--batch 256] [--threads 1] [--repeats 3] [--naive-repeats 1]
                                    [--steps 10] [--R 20] [--quick]

One DARHT student (small-cnn width 16 backbone, 2 teachers, MC dropout 0.3 with 8 head samples,
random weights: cost does not depend on them) in eval mode, on one fixed batch of 1x28x28 images
(the first `--batch` Fashion-MNIST test images if the data set loads, else seeded uniform noise).
Labels are the model's own deterministic predictions, so every example is classified correctly
clean and the evaluator attacks all of them, on both paths (it skips examples never correct).

Measured (warm-up call first, then the variants' repeats interleaved; median seconds reported):
  attacks   PGD (`--steps`) and FGSM at EOT 1 and EOT R through `darht.attacks`; EOT R once the
            library's way (head-only sampling: one backbone forward/backward for all R draws) and
            once the naive way (the student behind a wrapper without `forward_draws`: R full
            forward passes per gradient; timed `--naive-repeats` times for PGD, as it is slow);
  scoring   `score(model, x, y, draws=R)` vs `draws=1`, and vs R full passes (naive);
  evaluate  a whole `evaluate` with attacks fgsm and pgd on the MC student (EOT R, R draws) vs the
            same student with `set_deterministic(True)` (EOT 1, 1 draw);
  breakdown backbone forward+backward vs head forward+backward and dropout-mask sampling at C and
            R*C samples: where the time of an EOT step goes;
  exactness max |input gradient of forward_draws(x, R, masks)| - the mean gradient of R separate
            full passes with the same masks|: head-only sampling changes the cost, not the result.
Prints one JSON object on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks import fgsm, pgd
from darht.evaluation.robustness import evaluate
from darht.evaluation.spec import EvalSpec
from darht.evaluation.verdict import score
from darht.models import create_model
from darht.models.student import DarhtStudent

SHAPE = (1, 28, 28)
NUM_CLASSES = 10


class Plain(nn.Module):
    """The student without `forward_draws`: EOT and draws fall back to one full forward per draw."""

    def __init__(self, student: DarhtStudent):
        super().__init__()
        self.inner = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def build_student(mc_samples: int, dropout: float) -> DarhtStudent:
    torch.manual_seed(0)
    model = create_model("darht-student", num_classes=NUM_CLASSES, in_chans=SHAPE[0], img_size=SHAPE[1],
                         backbone="small-cnn", backbone_kwargs={"width": 16}, num_teachers=2)
    model.configure(dropout=dropout, mc_samples=mc_samples)
    return model.eval()


def load_batch(n: int) -> tuple[torch.Tensor, str]:
    try:
        from darht.data import load_dataset

        data = load_dataset("fashion-mnist", "test")
        if len(data) >= n:
            return data.float_x()[:n].contiguous(), f"fashion-mnist test[:{n}]"
        why = f"only {len(data)} test images"
    except Exception as e:  # no local copy: any error means "not available here"
        why = f"{type(e).__name__}: {e}"
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, *SHAPE, generator=g), f"uniform noise (seed 0; fashion-mnist unavailable: {why})"


def timed(variants: dict[str, Callable[[], object]], repeats: int,
          limited: dict[str, int] | None = None) -> dict[str, dict]:
    """Warm each variant up once, then run `repeats` rounds, the variants interleaved in each round
    (so load from other processes hits all of them alike). Median and min seconds per variant.

    `limited` {name: k}: that variant (an expensive naive one) skips the warm-up, as it runs the
    same modules on the same shapes as the warmed-up variants, and is timed in the first k rounds.
    """
    limited = limited or {}
    for k, fn in variants.items():
        if k not in limited:
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(repeats):
        for k, fn in variants.items():
            if i >= limited.get(k, repeats):
                continue
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": round(statistics.median(v), 4), "min_s": round(min(v), 4),
                "times_s": [round(t, 4) for t in v]} for k, v in times.items()}


def ratio(a: dict, b: dict) -> float:
    return round(a["median_s"] / b["median_s"], 2)


def bench_attacks(model: DarhtStudent, x: torch.Tensor, y: torch.Tensor, *, steps: int, R: int,
                  repeats: int, naive_repeats: int) -> dict:
    plain = Plain(model).eval()
    eps = 8 / 255
    out = {}
    for name, attack, kw in (("pgd", pgd, {"steps": steps}), ("fgsm", fgsm, {})):
        t = timed({
            "eot1": lambda: attack(model, x, y, eps=eps, eot=1, **kw),
            f"eot{R}_head_only": lambda: attack(model, x, y, eps=eps, eot=R, **kw),
            f"eot{R}_naive_full_passes": lambda: attack(plain, x, y, eps=eps, eot=R, **kw),
        }, repeats, limited={f"eot{R}_naive_full_passes": naive_repeats} if name == "pgd" else None)
        head, naive = t[f"eot{R}_head_only"], t[f"eot{R}_naive_full_passes"]
        out[name] = {"settings": {"eps": round(eps, 6), **kw}, "times": t,
                     f"ratio_eot{R}_over_eot1": ratio(head, t["eot1"]),
                     f"ratio_naive_eot{R}_over_eot1": ratio(naive, t["eot1"]),
                     "ratio_naive_over_head_only": ratio(naive, head)}
        print(f"{name}: EOT{R}/EOT1 {out[name][f'ratio_eot{R}_over_eot1']}x, naive/head-only "
              f"{out[name]['ratio_naive_over_head_only']}x", file=sys.stderr, flush=True)
    return out


def bench_scoring(model: DarhtStudent, x: torch.Tensor, y: torch.Tensor, *, R: int, repeats: int) -> dict:
    plain = Plain(model).eval()
    b = len(x)
    t = timed({
        "draws1": lambda: score(model, x, y, draws=1, batch_size=b),
        f"draws{R}_head_only": lambda: score(model, x, y, draws=R, batch_size=b),
        f"draws{R}_naive_full_passes": lambda: score(plain, x, y, draws=R, batch_size=b),
    }, repeats)
    head, naive = t[f"draws{R}_head_only"], t[f"draws{R}_naive_full_passes"]
    out = {"times": t, f"ratio_draws{R}_over_draws1": ratio(head, t["draws1"]),
           f"ratio_naive_draws{R}_over_draws1": ratio(naive, t["draws1"]),
           "ratio_naive_over_head_only": ratio(naive, head)}
    print(f"score: draws{R}/draws1 {out[f'ratio_draws{R}_over_draws1']}x, naive/head-only "
          f"{out['ratio_naive_over_head_only']}x", file=sys.stderr, flush=True)
    return out


def bench_evaluate(model: DarhtStudent, x: torch.Tensor, y: torch.Tensor, *, steps: int, R: int,
                   repeats: int) -> dict:
    spec = EvalSpec(attacks=["fgsm", "pgd"], n=None, batch_size=len(x), eot=R, draws=R,
                    attack_args={"pgd": {"steps": steps}}, faces=False, progress=False)
    device = torch.device("cpu")
    records: dict[str, dict] = {}

    def run(deterministic: bool) -> None:
        model.set_deterministic(deterministic)
        try:
            records["deterministic" if deterministic else "randomized"] = evaluate(model, x, y, spec, device)
        finally:
            model.set_deterministic(False)

    t = timed({"randomized": lambda: run(False), "deterministic": lambda: run(True)}, repeats)
    paths = {k: {"randomized": r["randomized"], "eot": r["eot"], "draws": r["draws"],
                 "examples_attacked": r["examples_attacked"], "attacks": r["attacks"]}
             for k, r in records.items()}
    out = {"settings": {"attacks": spec.attacks, "n": len(x), "batch_size": spec.batch_size,
                        "pgd_steps": steps, "eot": R, "draws": R, "faces": False},
           "paths": paths, "times": t,
           "ratio_randomized_over_deterministic": ratio(t["randomized"], t["deterministic"])}
    print(f"evaluate: randomized/deterministic {out['ratio_randomized_over_deterministic']}x",
          file=sys.stderr, flush=True)
    return out


def bench_breakdown(model: DarhtStudent, x: torch.Tensor, *, R: int, repeats: int) -> dict:
    """Forward+backward (to the input, resp. to the features) of the backbone alone and of the head
    at C and R*C samples: the parts an EOT-1 and an EOT-R gradient step are made of."""
    c, d = model.mc_samples, model.num_features
    keep = 1.0 - model.dropout
    with torch.no_grad():
        h0 = model.forward_features(x)
    masks_c = torch.empty(c, len(x), d).bernoulli_(keep).div_(keep)
    masks_rc = torch.empty(R * c, len(x), d).bernoulli_(keep).div_(keep)

    def backbone() -> None:
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(model.forward_features(xi).sum(), [xi])

    def head(masks: torch.Tensor) -> None:
        hi = h0.clone().requires_grad_(True)
        torch.autograd.grad(model.classifier(model.teacher_map(hi.unsqueeze(0) * masks)).sum(), [hi])

    def sample(k: int) -> None:  # the masks forward_draws draws per call, as it draws them
        torch.empty(k, len(x), d).bernoulli_(keep).div_(keep)

    t = timed({"backbone_fwd_bwd": backbone, f"head_fwd_bwd_{c}_samples": lambda: head(masks_c),
               f"head_fwd_bwd_{R * c}_samples": lambda: head(masks_rc),
               f"mask_sampling_{c}": lambda: sample(c), f"mask_sampling_{R * c}": lambda: sample(R * c)},
              repeats)
    return {"times": t, "note": "a gradient step at EOT E costs about backbone + head and mask sampling "
                                "at E*C samples (+ the loss over E draws)"}


def gradient_check(model: DarhtStudent, x: torch.Tensor, y: torch.Tensor, *, R: int) -> dict:
    """Input gradient of the mean CE over R draws: head-only (forward_draws) vs R full passes with
    the same masks (draw r uses masks[r*C:(r+1)*C], as forward_draws documents)."""
    c, d = model.mc_samples, model.num_features
    keep = 1.0 - model.dropout
    torch.manual_seed(1)
    masks = torch.empty(R * c, len(x), d).bernoulli_(keep).div_(keep)
    xi = x.clone().requires_grad_(True)
    logits = model.forward_draws(xi, R, masks)                     # [R, N, K], one backbone pass
    loss = sum(F.cross_entropy(z, y, reduction="sum") for z in logits) / R
    g_head = torch.autograd.grad(loss, [xi])[0]
    g_full = torch.zeros_like(x)
    l_full = []
    for r in range(R):
        xr = x.clone().requires_grad_(True)
        z = model.head_samples(model.forward_features(xr), masks[r * c:(r + 1) * c])[0].mean(0)
        g_full += torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), [xr])[0]
        l_full.append(z.detach())
    g_full /= R
    diff = (g_head - g_full).abs().max().item()
    scale = g_full.abs().max().item()
    return {"draws": R, "mc_samples": c, "dtype": "float32",
            "max_abs_grad_diff": diff, "max_abs_grad": scale, "relative": diff / scale if scale else 0.0,
            "max_abs_logit_diff": (logits.detach() - torch.stack(l_full)).abs().max().item()}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the 2-core machine is shared, 1 thread times steadily)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (after a warm-up)")
    p.add_argument("--naive-repeats", type=int, default=1,
                   help="timed runs of the naive EOT-R PGD (R full passes per step: the slowest part; no warm-up)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--R", type=int, default=20, help="EOT samples and draws of the randomized path")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (batch 16, 2 steps, R 4, 1 repeat)")
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.steps, a.R, a.repeats = min(a.batch, 16), min(a.steps, 2), min(a.R, 4), 1
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    load0 = os.getloadavg()

    model = build_student(mc_samples=8, dropout=0.3)
    x, source = load_batch(a.batch)
    with torch.no_grad():
        model.set_deterministic(True)
        y = model(x).argmax(1)  # every example correct clean: both evaluate paths attack all of them
        model.set_deterministic(False)

    kw = {"R": a.R, "repeats": a.repeats}
    results = {
        "attacks": bench_attacks(model, x, y, steps=a.steps, naive_repeats=a.naive_repeats, **kw),
        "scoring": bench_scoring(model, x, y, **kw),
        "evaluate": bench_evaluate(model, x, y, steps=a.steps, **kw),
        "breakdown": bench_breakdown(model, x, **kw),
        "gradient_check": gradient_check(model, x[:64], y[:64], R=a.R),
    }
    print(f"gradient check: max |diff| {results['gradient_check']['max_abs_grad_diff']:.3g}",
          file=sys.stderr, flush=True)
    pgd_r = results["attacks"]["pgd"][f"ratio_eot{a.R}_over_eot1"]
    summary = {
        f"pgd_eot{a.R}_over_eot1": pgd_r,
        f"fgsm_eot{a.R}_over_eot1": results["attacks"]["fgsm"][f"ratio_eot{a.R}_over_eot1"],
        f"pgd_naive_over_head_only_eot{a.R}": results["attacks"]["pgd"]["ratio_naive_over_head_only"],
        f"score_draws{a.R}_over_draws1": results["scoring"][f"ratio_draws{a.R}_over_draws1"],
        f"score_naive_over_head_only_draws{a.R}": results["scoring"]["ratio_naive_over_head_only"],
        "evaluate_randomized_over_deterministic": results["evaluate"]["ratio_randomized_over_deterministic"],
        "gradient_max_abs_diff": results["gradient_check"]["max_abs_grad_diff"],
        "pgd_target_at_most_2x_met": pgd_r <= 2.0,
    }
    script = os.path.relpath(os.path.abspath(__file__), os.getcwd())
    print(json.dumps({
        "benchmark": "eval", "command": shlex.join(["python", script, *argv]),
        "device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": {"arch": platform.machine(), "cpu_count": os.cpu_count(),
                    "loadavg_1_5_15_at_start": [round(v, 2) for v in load0],
                    "loadavg_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
                    "note": "shared 2-core CPU machine (a load average above the thread count means "
                            "other processes competed); timings are medians of interleaved repeats"},
        "model": {"name": "darht-student", "backbone": "small-cnn", "backbone_kwargs": {"width": 16},
                  "num_teachers": 2, "mc_samples": model.mc_samples, "dropout": model.dropout,
                  "weights": "random (seed 0)", "mode": "eval"},
        "data": {"source": source, "batch": a.batch, "input": list(SHAPE),
                 "labels": "the model's deterministic predictions"},
        "settings": {"pgd_steps": a.steps, "R": a.R, "repeats": a.repeats, "naive_pgd_repeats": min(a.naive_repeats, a.repeats), "quick": a.quick,
                     "eps": round(8 / 255, 6)},
        "summary": summary, "results": results,
        "wall_s": round(time.perf_counter() - t0, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
