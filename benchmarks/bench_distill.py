"""A DARHT training step against its floor: step time / the sum of the passes no implementation can avoid.

    python benchmarks/bench_distill.py [--batch 64] [--steps 10] [--rounds 3] [--threads 2]
        [--student resnet18] [--teachers wrn-34-10,timm:vit_tiny_patch16_224]
        [--modes darht,darht-official] [--malloc [system,]retain] [--out results/bench_distill.json]
        [--profile] [--quick]

Workload (defaults): CIFAR-100 shapes (3x32x32, 100 classes; seeded uniform images and labels, as
no data set can be downloaded here and the cost does not depend on pixel values), a ResNet-18
student (darht-student around `resnet18`, width 64), B = 64, K = 10 PGD steps of the inner attack,
J = 2 frozen teachers: WRN-34-10 and timm's ViT-Ti/16 at 224 px (its input adapter resizes 32 ->
224 inside the model), random weights, fp32, CPU, 2 threads. (A ViT-B/16 forward on 64 images
takes ~50 s on this 2-core machine, a ViT-S/16 ~7 s: pass `--teachers` to time those; the smaller
ViT keeps a run to minutes and leaves the student's own passes a larger share of the floor, which
is where any overhead of the step would show.) Both modes:
  darht           the paper: per-example coin (M of B attacked), MC dropout 0.3 x 8 head samples;
  darht-official  one coin per batch (the seed is chosen so that the batch is attacked: M = B),
                  epoch 60 of 350 (the CE + KD phase), no MC dropout.

The step is what the trainer runs: zero_grad, method.loss(x, y), backward, SGD step (lr 0.1,
momentum 0.9, weight decay 2e-4). The floor is the sum of the passes any implementation must run,
each timed alone in the same run on the same tensors:
  attack    K x (student forward + input backward) on the M attacked examples (eval mode, CE
            summed, autograd.grad w.r.t. the input only, as the inner attack takes it);
  teachers  each teacher's forward (FrozenTeacher: inference mode) on the B-example batch;
  update    one student forward (train mode, with the teacher maps) + backward + SGD step on B.
M is what the coin chooses under a fixed seed: the RNG is reseeded and the weights and optimizer
state are restored (untimed) before every timed step, so every step does the same work and the
floor's attack pass uses the same M.

Timing: one untimed step first (it runs every pass on the same shapes: the warm-up), then
`--rounds` rounds, each running the step and every floor pass once, interleaved (load from other
processes on the shared machine hits both alike). Per pass the minimum over rounds; floor = sum of
those minima; ratio = min step / floor. Next to it: the same from medians, from the best round's
own floor, and from process CPU time (see `ratios`). Prints one JSON document on stdout (progress
on stderr) and writes it to `--out`.

Allocator (`--malloc system,retain` runs everything under each, in that order): with glibc's
default every large activation is a fresh mmap that the kernel faults in and zeroes, in the step
and in each floor pass alike, but a step (attack graphs, teacher activations and the training
graph one after another) faults in more memory than its passes do alone: minor page faults and
system time are recorded per pass (`sys_times_s`, `minor_page_faults`). `retain` keeps freed
memory for reuse; it is the trainer's default on CPU (`cpu_malloc`, darht.engine.malloc) and so
this script's default too.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from darht.engine.malloc import POLICIES, set_cpu_malloc
from darht.models import create_model
from darht.models.student import unwrap_student
from darht.models.teachers import FrozenTeacher
from darht.registry import METHODS

SHAPE, NUM_CLASSES = (3, 32, 32), 100
GOAL = 1.10
OFFICIAL_EPOCH = (60, 350)  # 0-based epoch 60 of 350: between the authors' 50 and 118, CE + KD
# --quick: tiny models for development and the smoke test (not a measurement)
QUICK = {"batch": 8, "steps": 2, "rounds": 1, "student_kwargs": {"width": 4},
         "teachers": [("wrn-34-10", {"depth": 10, "widen_factor": 1}), ("vit-tiny", {"depth": 1})]}


# ---- timing helpers (bench_train.py imports these) --------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(variants: dict[str, Callable[[], tuple[float, dict]]], rounds: int, warmup: bool = False
                ) -> dict[str, dict]:
    """Each variant returns (wall seconds, CPU use) of its own timed part (its set-up stays
    untimed). `rounds` rounds running every variant once, in order (after one warm-up call each if
    `warmup`; the callers here have already run a whole step, which runs every pass on the same
    shapes). Per variant: wall min/median/all, CPU (user + sys) min/all, sys and page faults."""
    if warmup:
        for fn in variants.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in variants}
    use: dict[str, list[dict]] = {k: [] for k in variants}
    for r in range(rounds):
        for k, fn in variants.items():
            w, u = fn()
            wall[k].append(w)
            use[k].append(u)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in wall.items()),
              file=sys.stderr, flush=True)
    out = {}
    for k, v in wall.items():
        cpu = [u["user"] + u["sys"] for u in use[k]]
        out[k] = {"min_s": round(min(v), 4), "median_s": round(statistics.median(v), 4),
                  "times_s": [round(t, 4) for t in v], "cpu_min_s": round(min(cpu), 4),
                  "cpu_times_s": [round(t, 4) for t in cpu],
                  "sys_times_s": [round(u["sys"], 4) for u in use[k]],
                  "minor_page_faults": [u["minflt"] for u in use[k]]}
    return out


def timer(device: torch.device, fn: Callable[[], object], setup: Callable[[], object] | None = None
          ) -> Callable[[], tuple[float, dict]]:
    """A variant for `interleaved`: untimed `setup`, then `fn` timed (device synchronised): wall
    seconds and this process's CPU use (user and system seconds of all its threads, less sensitive
    to other processes than wall time, and minor page faults: memory the allocator had to map)."""
    def run() -> tuple[float, dict]:
        if setup is not None:
            setup()
        sync(device)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        sync(device)
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        return t1 - t0, {"user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
                         "minflt": r1.ru_minflt - r0.ru_minflt}
    return run


def ratios(times: dict[str, dict], step: str, floor: list[str]) -> dict:
    """ratio: min step / sum of the passes' minima (the strict floor: each pass at its best round);
    ratio_of_medians: the same from medians; ratio_per_round: min step / min over rounds of that
    round's floor (its passes ran back to back right after the step, so both saw similar load);
    ratio_cpu: the strict ratio from process CPU time (wall time is what counts; CPU time shows
    whether a wall-time excess is work or waiting for cores other processes hold)."""
    f_min = sum(times[k]["min_s"] for k in floor)
    f_med = sum(times[k]["median_s"] for k in floor)
    f_cpu = sum(times[k]["cpu_min_s"] for k in floor)
    per_round = [sum(r) for r in zip(*(times[k]["times_s"] for k in floor))]
    return {"step_s": times[step]["min_s"], "floor_s": round(f_min, 4),
            "ratio": round(times[step]["min_s"] / f_min, 3),
            "ratio_of_medians": round(times[step]["median_s"] / f_med, 3),
            "ratio_per_round": round(times[step]["min_s"] / min(per_round), 3),
            "ratio_cpu": round(times[step]["cpu_min_s"] / f_cpu, 3),
            "step_over_floor_each_round": [round(s / f, 3) for s, f in zip(times[step]["times_s"], per_round)],
            "floor_parts_s": {k: times[k]["min_s"] for k in floor}}


class Snapshot:
    """Weights, buffers and optimizer state, restored before every timed step (untimed): each
    step then starts from the same state and does the same work."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer):
        self.model, self.opt = model, opt
        self.weights = copy.deepcopy(model.state_dict())
        self.opt_state = copy.deepcopy(opt.state_dict())

    def restore(self) -> None:
        self.model.load_state_dict(self.weights)
        self.opt.load_state_dict(copy.deepcopy(self.opt_state))


def train_step(method, opt: torch.optim.Optimizer, model: nn.Module, x: torch.Tensor, y: torch.Tensor
               ) -> dict:
    """One step as the trainer runs it (engine.trainer: zero_grad, loss, backward, step)."""
    model.train()
    opt.zero_grad(set_to_none=True)
    out = method.loss(x, y)
    out["loss"].backward()
    opt.step()
    return out


def input_grad_passes(model: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
    """Floor of an inner attack: per (x, y), one forward + input backward in eval mode (CE summed)."""
    model.eval()
    try:
        for x, y in zip(xs, ys):
            xi = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), [xi])
    finally:
        model.train()


def machine_info(load0: tuple[float, float, float]) -> dict:
    return {"arch": platform.machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "torch": torch.__version__,
            "loadavg_1_5_15_at_start": [round(v, 2) for v in load0],
            "loadavg_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
            "note": "shared 2-core CPU machine (a load average above the thread count means other "
                    "processes competed); step and floor passes are interleaved and the minima used"}


def common_args(p: argparse.ArgumentParser, out: str, unit: str, quick: str) -> None:
    """The flags both step/floor benchmarks take (bench_train.py calls this too)."""
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="K: attack steps")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None,
                   help=f"also write the JSON here (default {out}; none with --quick; '' = don't)")
    p.add_argument("--profile", action="store_true", help=f"add a torch.profiler table of one step per {unit}")
    p.add_argument("--malloc", default="retain",
                   help="comma list of allocator policies to run under, in order: system (glibc's default), "
                        "retain (big blocks kept for reuse: the trainer's default on CPU, darht.engine.malloc)")
    p.add_argument("--quick", action="store_true", help=quick)


def malloc_policies(text: str, error: Callable[[str], object]) -> list[str]:
    policies = [m.strip() for m in text.split(",") if m.strip()]
    if not policies or any(m not in POLICIES for m in policies) or len(set(policies)) != len(policies):
        error(f"--malloc: a comma list of {', '.join(POLICIES)}, got {text!r}")
    if "retain" in policies[:-1]:
        error("--malloc: 'retain' cannot be undone within a process: put it last")
    return policies


def by_malloc(runs: dict[str, dict], key: str) -> dict:
    """The summary: ratios per entry of each policy's run, the first policy's at the top level."""
    def one(entries: dict) -> dict:
        out = {f"{m}_step_over_floor": r["ratio"] for m, r in entries.items()}
        out.update({f"{m}_step_over_floor_per_round": r["ratio_per_round"] for m, r in entries.items()})
        out.update({f"{m}_step_over_floor_medians": r["ratio_of_medians"] for m, r in entries.items()})
        out.update({f"{m}_step_s": r["step_s"] for m, r in entries.items()})
        out["goal_met"] = all(r["ratio"] <= GOAL for r in entries.values())
        return out

    first = next(iter(runs))
    summary = {"malloc": first, **one(runs[first][key]), "goal": GOAL}
    if len(runs) > 1:
        summary["by_malloc"] = {m: one(r[key]) for m, r in runs.items()}
    return summary


def profile_step(run: Callable[[], object], rows: int = 25) -> str:
    """torch.profiler table (self CPU time) of one call, for finding where a step exceeds its floor."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def result(benchmark: str, script: str, a: argparse.Namespace, argv: list[str], device: torch.device,
           workload: dict, floor: str, runs: dict[str, dict], key: str, policies: list[str], load0: tuple,
           t0: float) -> dict:
    """The JSON record of a step/floor benchmark (shared by bench_distill and bench_train)."""
    script = os.path.relpath(os.path.abspath(script), os.getcwd())
    return {
        "benchmark": benchmark, "command": shlex.join(["python", script, *argv]),
        "quick": a.quick, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "workload": workload, "floor": floor,
        "timing": f"{a.rounds} interleaved rounds after a warm-up step; per pass the minimum; floor = sum of minima",
        "malloc": {m: POLICIES[m] for m in policies},
        "summary": by_malloc(runs, key), key: runs[policies[0]][key],
        **({"by_malloc": runs} if len(runs) > 1 else {}), "machine": machine_info(load0),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def write(out: dict, path: str | None) -> None:
    text = json.dumps(out, indent=1)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


# ---- the DARHT step -----------------------------------------------------------------------------
def make_teachers(specs: list[tuple[str, dict]], device: torch.device) -> tuple[list[nn.Module], list[dict]]:
    teachers, info = [], []
    for name, kw in specs:
        torch.manual_seed(0)
        model = create_model(name, NUM_CLASSES, SHAPE[0], SHAPE[1], **kw)
        size = getattr(model, "input_size", None)
        teachers.append(FrozenTeacher(model).to(device))
        info.append({"model": name, "kwargs": kw, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                     "input_size": list(size) if size else list(SHAPE[1:])})
    return teachers, info


def coin_seed(method, batch: int, device: torch.device, want_all: bool) -> tuple[int, int]:
    """A seed and the M its coin chooses (the coin is the first draw of `loss`). darht-official:
    the first seed whose batch coin says 'attack' (M = B); darht: seed 0."""
    for seed in range(100):
        torch.manual_seed(seed)
        m = int(method.choose(batch, device).sum())
        if m == batch or not want_all:
            return seed, m
    raise RuntimeError("no seed found whose coin attacks the batch")


def bench_mode(mode: str, a: argparse.Namespace, teachers: list[nn.Module], teacher_info: list[dict],
               x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict:
    cls = METHODS.get(mode)
    torch.manual_seed(1)
    student = cls.build_model(a.student, NUM_CLASSES, SHAPE[0], SHAPE[1], num_teachers=len(teachers),
                              **a.student_kwargs).to(device)
    method = cls(student, teachers, steps=a.steps)
    if cls.official:
        method.start_epoch(*OFFICIAL_EPOCH)
    else:
        method.start_epoch(0, 1)
    if method.phase() != "ce+kd":
        raise RuntimeError(f"{mode}: expected the CE + KD phase, got {method.phase()}")
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                          weight_decay=2e-4)
    s = unwrap_student(student)
    seed, m = coin_seed(method, len(x), device, want_all=cls.official)
    torch.manual_seed(seed)
    idx = method.choose(len(x), device).nonzero().squeeze(1)
    xa, ya = x[idx].contiguous(), y[idx].contiguous()

    def step() -> None:
        torch.manual_seed(seed)
        train_step(method, opt, student, x, y)

    step()  # momentum buffers exist from here on, as in a running training
    snap = Snapshot(student, opt)

    def update() -> None:  # one student forward (with maps) + backward + SGD step on the batch
        student.train()
        opt.zero_grad(set_to_none=True)
        logits, maps = student(x, return_maps=True)
        F.cross_entropy(logits, y).backward()
        opt.step()

    variants = {"step": timer(device, step, setup=snap.restore),
                "attack": timer(device, lambda: input_grad_passes(student, [xa] * a.steps, [ya] * a.steps))}
    for j, T in enumerate(teachers):
        variants[f"teacher{j}"] = timer(device, lambda T=T: T(x))
    variants["update"] = timer(device, update)
    print(f"{mode}: M = {m} of {len(x)}, K = {a.steps}, {len(teachers)} teachers", file=sys.stderr, flush=True)
    times = interleaved(variants, a.rounds)
    snap.restore()
    out = {"method": mode, "phase": method.phase(), "seed": seed, "M": m, "B": len(x), "K": a.steps,
           "inner_attack": {"name": method.attack_name, **{k: (round(v, 6) if isinstance(v, float) else v)
                                                          for k, v in method.inner.items()}},
           "dropout": s.dropout, "mc_samples": s.mc_samples,
           "times": times, **ratios(times, "step", [k for k in variants if k != "step"])}
    out["attack_pass_s"] = round(times["attack"]["min_s"] / max(a.steps, 1), 4)  # one fwd + input bwd on M
    return finish(out, mode, a, snap, step)


def finish(out: dict, label: str, a: argparse.Namespace, snap: "Snapshot", step: Callable) -> dict:
    """With --profile, a torch.profiler table of one more step; the weights restored; the ratio
    printed (bench_train.py ends each method with this too)."""
    if a.profile:
        out["profile"] = profile_step(lambda: (snap.restore(), step()))
        print(out["profile"], file=sys.stderr, flush=True)
    snap.restore()
    print(f"{label}: step {out['step_s']:.2f}s, floor {out['floor_s']:.2f}s, ratio {out['ratio']}",
          file=sys.stderr, flush=True)
    return out


def parse_teachers(text: str) -> list[tuple[str, dict]]:
    return [(t.strip(), {}) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(p, "results/bench_distill.json", "mode",
                "tiny models and sizes (batch 8, K 2, 1 round, width-4 student, WRN-10-1 and 1-block ViT "
                "teachers at 32 px); not a measurement. Writes no file unless --out is given")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--width", type=int, default=None, help="the student backbone's width (resnet18: 64)")
    p.add_argument("--teachers", default="wrn-34-10,timm:vit_tiny_patch16_224",
                   help="comma-separated teacher model names (random weights)")
    p.add_argument("--modes", default="darht,darht-official")
    a = p.parse_args(argv)
    policies = malloc_policies(a.malloc, p.error)
    a.student_kwargs = {} if a.width is None else {"width": a.width}
    teacher_specs = parse_teachers(a.teachers)
    if a.quick:
        a.batch, a.steps, a.rounds = min(a.batch, QUICK["batch"]), min(a.steps, QUICK["steps"]), QUICK["rounds"]
        a.student_kwargs = {**QUICK["student_kwargs"], **a.student_kwargs}
        teacher_specs = QUICK["teachers"]
    if a.out is None:
        a.out = "" if a.quick else "results/bench_distill.json"
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch, *SHAPE, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (a.batch,), generator=g).to(device)
    teachers, teacher_info = make_teachers(teacher_specs, device)
    runs = {}
    for policy in policies:
        applied = set_cpu_malloc(policy, quiet=True)
        print(f"malloc: {policy}{'' if applied else ' (could not be applied)'}", file=sys.stderr, flush=True)
        runs[policy] = {"applied": applied,
                        "modes": {m: bench_mode(m, a, teachers, teacher_info, x, y, device)
                                  for m in a.modes.split(",")}}
    workload = {"data": f"synthetic CIFAR-100 shapes: {a.batch} seeded uniform images {list(SHAPE)}, "
                        f"labels uniform over {NUM_CLASSES} classes",
                "student": {"model": "darht-student", "backbone": a.student, "backbone_kwargs": a.student_kwargs},
                "teachers": teacher_info, "B": a.batch, "K": a.steps, "dtype": "float32",
                "weights": "random (seeded)", "optimizer": "SGD lr 0.1 momentum 0.9 wd 2e-4"}
    floor = ("attack: K x (student forward + input backward) on the M attacked examples; teacherJ: "
             "each teacher's forward on B; update: student forward + backward + SGD step on B")
    out = result("distill_step_over_floor", __file__, a, argv, device, workload, floor, runs, "modes", policies, load0, t0)
    write(out, a.out)
    return out


if __name__ == "__main__":
    main()
