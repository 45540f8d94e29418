"""Speed of one DARHT training step (attack + forward + backward + SGD step), in images/s.

For J = 1, 2, 4 frozen teachers (small-cnn and vit-tiny, alternating; the ViTs are 2 blocks deep so
the teachers do not dominate on a CPU), a small-cnn student, synthetic 1x28x28 input. Two
implementations of the same method are timed in the same run:
  darht  this library: only the examples chosen to be adversarial are attacked, and MC dropout
         samples only the head (the backbone runs once per forward);
  naive  the whole batch is attacked and the unchosen half thrown away, and every MC sample is a
         complete student forward pass (C backbone passes), in the attack and in the loss.
Steps of the two are interleaved and the fastest step of each is reported (robust to load from
other processes). Prints one JSON object on stdout.  Usage: python benchmarks/bench_distill.py [--steps 3] ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks.pgd import pgd
from darht.methods.darht import Darht
from darht.models.teachers import FrozenTeacher
from darht.models import create_model
from darht.models.student import DarhtStudent

K, C, S = 10, 1, 28
TEACHERS = (("small-cnn", {}), ("vit-tiny", {"depth": 2}))


class NaiveMC(nn.Module):
    """MC dropout the obvious way: C complete forward passes of the student, logits averaged."""

    def __init__(self, student: DarhtStudent):
        super().__init__()
        self.module = student  # `module`: Darht finds the student inside, as under DDP

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        s = self.module
        logits, maps = [], []
        for _ in range(s.mc_samples):
            h = F.dropout(s.backbone.forward_features(x), s.dropout, training=True)
            m = s.teacher_map(h)
            maps.append(m.view(-1, s.num_teachers, s.num_classes))
            logits.append(s.classifier(m))
        logits, maps = torch.stack(logits).mean(0), torch.stack(maps).mean(0)
        return (logits, maps) if return_maps else logits


class NaiveDarht(Darht):
    """Same loss; the attack runs on the whole batch (through NaiveMC) and half of it is discarded."""

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.choose(x.shape[0], x.device)
        x_adv = pgd(self.model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps, loss="ce",
                    start=self.start).detach()
        return torch.where(chosen[:, None, None, None], x_adv, x), chosen


def make_teachers(j: int, device: torch.device) -> tuple[list[nn.Module], list[str]]:
    out, names = [], []
    for i in range(j):
        name, kw = TEACHERS[i % len(TEACHERS)]
        out.append(FrozenTeacher(create_model(name, K, C, S, **kw)).to(device))
        names.append(name + ("" if not kw else f"(depth={kw['depth']})"))
    return out, names


def train_step(method: Darht, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one full training step."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    method.student.train()
    opt.zero_grad(set_to_none=True)
    method.loss(x, y)["loss"].backward()
    opt.step()
    sync()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="PGD steps of the inner attack")
    ap.add_argument("--iters", type=int, default=2,
                    help="timed training steps per implementation (images/s from the fastest)")
    ap.add_argument("--mc-samples", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--teachers", default="1,2,4", help="comma-separated teacher counts")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    torch.manual_seed(0)
    x = torch.rand(args.batch, C, S, S, device=device)
    y = torch.randint(0, K, (args.batch,), device=device)
    results = []
    for j in (int(v) for v in args.teachers.split(",")):
        teachers, names = make_teachers(j, device)
        row: dict = {"num_teachers": j, "teachers": names}
        runs = {}
        for label, cls, wrap in (("darht", Darht, lambda s: s), ("naive", NaiveDarht, NaiveMC)):
            torch.manual_seed(1)
            student = Darht.build_model("small-cnn", K, C, S, num_teachers=j).to(device)
            method = cls(wrap(student), teachers, steps=args.steps, mc_samples=args.mc_samples)
            opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
            train_step(method, opt, x, y)  # warm-up: first-call allocations
            runs[label] = (method, opt, [])
        for _ in range(args.iters):  # interleaved, so load from other processes hits both alike
            for method, opt, times in runs.values():
                times.append(train_step(method, opt, x, y))
        for label, (_, _, times) in runs.items():
            row[f"{label}_images_per_s"] = round(args.batch / min(times), 2)  # best step: least noise
        row["speedup"] = round(row["darht_images_per_s"] / row["naive_images_per_s"], 2)
        results.append(row)
    out = {"benchmark": "distill_step", "device": str(device), "batch": args.batch, "steps": args.steps,
           "iters": args.iters, "mc_samples": args.mc_samples, "dropout": 0.3, "student": "small-cnn",
           "input": [C, S, S], "torch": torch.__version__, "threads": torch.get_num_threads(),
           "results": results, "seconds": round(time.perf_counter() - t_start, 1)}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return out


if __name__ == "__main__":
    main()
