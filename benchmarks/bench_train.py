"""A teacher-training step (TRADES, FAT) against its floor: step time / the sum of the passes no
implementation can avoid.

    python benchmarks/bench_train.py [--methods trades,fat] [--model resnet18] [--batch 64]
        [--steps 10] [--rounds 3] [--threads 2] [--malloc [system,]retain] [--out results/bench_train.json]
        [--profile] [--quick]

Workload (defaults): CIFAR-100 shapes (3x32x32, 100 classes; seeded uniform images), a ResNet-18
(`resnet18`, width 64, random weights) trained by the method, B = 64, K = 10 attack steps at the
methods' released settings (eps 0.031, step 0.007), fp32, CPU, 2 threads. FAT runs at epoch 60 of
120 of its dynamic schedule (tau = 1) with omega 0.001. Labels: half of the batch (seeded) gets the
model's own prediction (correct clean) and half a uniform random class (already wrong), so FAT's
early stopping has both kinds of example, as in the middle of a run (a random-weight model left
alone is either wrong on all examples or fooled by none).

The step is what the trainer runs: zero_grad, method.loss(x, y), backward, SGD step (lr 0.1,
momentum 0.9, weight decay 2e-4). The floor, each pass timed alone in the same run:
  clean     TRADES (and FAT-TRADES): the forward giving softmax f(x), the KL attack's fixed
            target (eval mode, no grad) on B;
  attack    per attack step, one forward + input backward (eval mode) on the examples that step
            needs: all B for TRADES and PGD-AT; for FAT the examples still active by its rule (an
            independent reference loop replays the attack from the same seed and weights and counts
            them; the JSON also gives the batch sizes the implementation ran);
  update    the training forward(s) + backward + SGD step on B: TRADES forward(x) and forward(x')
            (two passes: BatchNorm must not mix them), FAT and PGD-AT forward(x').
Timing as in bench_distill.py: weights and optimizer state restored and the RNG reseeded (untimed)
before every timed step; `--rounds` interleaved rounds; per pass the minimum; floor = sum of minima;
ratio = min step / floor (and the variants of bench_distill.ratios). `--malloc system,retain` runs
everything under glibc's default allocator policy and then with freed memory retained (see
bench_distill.py). Prints one JSON document on stdout and writes it to `--out`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distill import (Snapshot, common_args, finish, input_grad_passes, interleaved, malloc_policies,  # noqa: E402
                           result, ratios, timer,
                           train_step, write)

from darht.attacks.core import clean_probs, eval_mode, logits_and_input_grad, project_linf, random_start  # noqa: E402
from darht.attacks.pgd import make_loss  # noqa: E402
from darht.engine.malloc import set_cpu_malloc  # noqa: E402
from darht.registry import METHODS  # noqa: E402

SHAPE, NUM_CLASSES = (3, 32, 32), 100
EPOCH = {"fat": (60, 120), "fat-trades": (40, 85)}  # mid-run: tau 1 (FAT), tau 2 (FAT-TRADES)
TWO_FORWARDS = ("trades", "fat-trades")              # TRADES loss: forward(x) and forward(x')
CLEAN_TARGET = ("trades", "fat-trades")              # KL attack: softmax f(x) computed first
EARLY_STOPPED = ("fat", "fat-trades")
QUICK = {"batch": 8, "steps": 2, "rounds": 1, "model_kwargs": {"width": 4}}


def attack_sizes_done(model: nn.Module, run) -> list[int]:
    """The batch size of every eval-mode forward with grad enabled (an attack step's pass) in run()."""
    sizes: list[int] = []

    def hook(module, inputs):
        if not module.training and torch.is_grad_enabled():
            sizes.append(int(inputs[0].shape[0]))

    handle = model.register_forward_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return sizes


def fat_sizes_needed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
                     steps: int, tau: int, omega: float, loss: str, start: str, sigma: float = 0.001
                     ) -> list[int]:
    """Early-stopped PGD written out on the whole batch (FAT's rule: before every step an example
    is classified; a misclassified one pays one unit of its budget tau for the step, one with no
    budget left stops for good). Returns how many examples each step needs: those still active.
    Run from the RNG state the method's attack starts from (its only draws: start and noise)."""
    counts = []
    with eval_mode(model):
        target = clean_probs(model, x) if loss == "kl" else None
        xa = random_start(x, eps, start, sigma)
        budget = torch.full_like(y, tau)
        active = torch.ones_like(y, dtype=torch.bool)
        for _ in range(steps):
            n = int(active.sum())
            if n == 0:
                break
            counts.append(n)
            logits, g = logits_and_input_grad(model, xa, make_loss(loss, y, target_probs=target))
            wrong = logits.argmax(1) != y
            go = active & ~(wrong & (budget == 0))
            budget = budget - (go & wrong).long()
            active = go
            step = alpha * g.sign()
            if omega > 0:
                step = step + omega * torch.randn_like(x)
            xa = torch.where(go[:, None, None, None], project_linf(xa + step, x, eps), xa)
    return counts


def attack_settings(name: str, method) -> dict:
    a = method.args
    if name in EARLY_STOPPED:
        ce = name == "fat"
        return {"eps": a.eps, "alpha": a.alpha, "steps": a.steps, "tau": method.tau, "omega": a.omega,
                "loss": "ce" if ce else "kl", "start": "uniform" if ce else "normal"}
    return {"eps": a.eps, "alpha": a.alpha, "steps": a.steps}


def bench_method(name: str, a: argparse.Namespace, x: torch.Tensor, y: torch.Tensor,
                 device: torch.device) -> dict:
    cls = METHODS.get(name)
    torch.manual_seed(1)
    model = cls.build_model(a.model, NUM_CLASSES, SHAPE[0], SHAPE[1], **a.model_kwargs).to(device)
    method = cls(model, teachers=[], steps=a.steps)
    method.start_epoch(*EPOCH.get(name, (0, 1)))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                          weight_decay=2e-4)
    seed = 0

    def step() -> None:
        torch.manual_seed(seed)
        train_step(method, opt, model, x, y)

    step()  # momentum buffers exist from here on, as in a running training
    snap = Snapshot(model, opt)
    settings = attack_settings(name, method)
    snap.restore()
    done = attack_sizes_done(model, step)
    if name in EARLY_STOPPED:
        snap.restore()
        torch.manual_seed(seed)
        needed = fat_sizes_needed(model, x, y, **settings)
    else:
        needed = [len(x)] * a.steps
    snap.restore()

    def update() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)  # x stands for x' (the cost does not depend on values)
        if name in TWO_FORWARDS:
            loss = loss + F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    def clean() -> None:
        model.eval()
        clean_probs(model, x)
        model.train()

    variants = {"step": timer(device, step, setup=snap.restore)}
    if name in CLEAN_TARGET:
        variants["clean"] = timer(device, clean)
    variants["attack"] = timer(device, lambda: input_grad_passes(model, [x[:n] for n in needed],
                                                                 [y[:n] for n in needed]))
    variants["update"] = timer(device, update)
    print(f"{name}: attack batch sizes needed {needed}, done {done}", file=sys.stderr, flush=True)
    times = interleaved(variants, a.rounds)
    out = {"method": name, "epoch_of": list(EPOCH.get(name, (0, 1))), "attack": settings,
           "attack_batch_sizes": {"needed": needed, "done": done, "done_equals_needed": done == needed},
           "times": times, **ratios(times, "step", [k for k in variants if k != "step"])}
    return finish(out, name, a, snap, step)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="trades,fat", help="comma list of trades, fat, fat-trades, pgd-at")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=int, default=None, help="the model's width (resnet18: 64)")
    common_args(p, "results/bench_train.json", "method",
                "tiny sizes (batch 8, K 2, 1 round, width-4 model); not a measurement")
    a = p.parse_args(argv)
    policies = malloc_policies(a.malloc, p.error)
    a.model_kwargs = {} if a.width is None else {"width": a.width}
    if a.quick:
        a.batch, a.steps, a.rounds = min(a.batch, QUICK["batch"]), min(a.steps, QUICK["steps"]), QUICK["rounds"]
        a.model_kwargs = {**QUICK["model_kwargs"], **a.model_kwargs}
    if a.out is None:
        a.out = "" if a.quick else "results/bench_train.json"
    for name in a.methods.split(","):
        if name not in ("trades", "fat", "fat-trades", "pgd-at"):
            p.error(f"--methods: no floor defined for '{name}' (trades, fat, fat-trades, pgd-at)")
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch, *SHAPE, generator=g).to(device)
    torch.manual_seed(1)  # the labels: half the model's own predictions (see the docstring)
    probe = METHODS.get("standard").build_model(a.model, NUM_CLASSES, SHAPE[0], SHAPE[1], **a.model_kwargs)
    with torch.no_grad():
        pred = probe.to(device).eval()(x).argmax(1)
    own = torch.rand(a.batch, generator=g) < 0.5
    y = torch.where(own.to(device), pred, torch.randint(0, NUM_CLASSES, (a.batch,), generator=g).to(device))
    runs = {}
    for policy in policies:
        applied = set_cpu_malloc(policy, quiet=True)
        print(f"malloc: {policy}{'' if applied else ' (could not be applied)'}", file=sys.stderr, flush=True)
        runs[policy] = {"applied": applied,
                        "methods": {m: bench_method(m, a, x, y, device) for m in a.methods.split(",")}}
    workload = {"data": f"synthetic CIFAR-100 shapes: {a.batch} seeded uniform images {list(SHAPE)}",
                "labels": "half (seeded) the model's own eval-mode prediction, half uniform random",
                "model": a.model, "model_kwargs": a.model_kwargs, "B": a.batch, "K": a.steps,
                "dtype": "float32", "weights": "random (seeded)", "optimizer": "SGD lr 0.1 momentum 0.9 wd 2e-4"}
    floor = ("clean: softmax f(x) target forward (TRADES); attack: one forward + input backward per "
             "attack step on the examples it needs; update: training forward(s) + backward + SGD step")
    out = result("train_step_over_floor", __file__, a, argv, device, workload, floor, runs, "methods", policies, load0, t0)
    write(out, a.out)
    return out


if __name__ == "__main__":
    main()
