"""Training throughput per method, and how a step's time splits into attack generation vs update.

    python benchmarks/bench_train.py [--batch 32] [--iters 3] [--steps 3] [--amp bf16 | fp32,bf16]

Prints one JSON document: for each (model, method, amp) the images/s of full training steps
(method.loss + backward + SGD step, as the trainer runs them) and the share of that time spent
generating adversarial examples.

How the attack is timed, without knowing the method: by the method contract, inner
maximisations run with the model in eval mode and the training forward runs in train mode. So a
forward pre-hook on the model marks the first train-mode forward of each step; the time from the
start of `method.loss` to that mark is attack generation, the rest of the step (training forward,
backward, optimizer step) is the weight update.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
import time
from contextlib import nullcontext

import torch

from darht.registry import METHODS

METHODS_DEFAULT = "standard,pgd-at,trades,fat,fat-trades"
MODELS_DEFAULT = "small-cnn,vit-tiny"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(model_name: str, method_name: str, amp: str, *, batch: int, iters: int, steps: int,
              device: torch.device, shape=(1, 28, 28), num_classes: int = 10) -> dict:
    torch.manual_seed(0)
    cls = METHODS.get(method_name)
    model = cls.build_model(model_name, num_classes, shape[0], shape[1]).to(device)
    accepted = inspect.signature(cls.__init__).parameters
    args = {"steps": steps} if "steps" in accepted else {}
    method = cls(model, teachers=[], **args)
    method.start_epoch(0, 1, 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    if amp not in ("fp32", "bf16"):
        raise SystemExit(f"--amp: unknown precision '{amp}' (fp32 or bf16)")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" else nullcontext

    mark: list[float] = []

    def first_train_forward(module, inputs):  # the end of attack generation (see module docstring)
        if module.training and not mark:
            _sync(device)
            mark.append(time.perf_counter())

    handle = model.register_forward_pre_hook(first_train_forward)
    attack_t = total_t = 0.0
    try:
        for i in range(iters + 1):  # iteration 0 warms up (allocations, kernels) and is not timed
            model.train()
            mark.clear()
            _sync(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = method.loss(x, y)
            out["loss"].backward()
            opt.step()
            _sync(device)
            t1 = time.perf_counter()
            if i > 0:
                total_t += t1 - t0
                attack_t += (mark[0] if mark else t0) - t0
    finally:
        handle.remove()
    return {"model": model_name, "method": method_name, "amp": amp, "attack_steps": args.get("steps", 0),
            "images_per_s": round(batch * iters / total_t, 1), "step_ms": round(1000 * total_t / iters, 2),
            "attack_share": round(attack_t / total_t, 3), "update_share": round(1 - attack_t / total_t, 3)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=3, help="timed iterations (after one warm-up)")
    p.add_argument("--steps", type=int, default=3, help="attack steps of the adversarial methods")
    p.add_argument("--methods", default=METHODS_DEFAULT)
    p.add_argument("--models", default=MODELS_DEFAULT)
    p.add_argument("--amp", default="fp32",
                   help="precision(s), comma list of fp32, bf16 (bf16 autocast runs on CPU, but CPUs "
                        "without native bf16 run it far slower than fp32)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    results = []
    t0 = time.perf_counter()
    for model_name in a.models.split(","):
        for amp in a.amp.split(","):
            for method_name in a.methods.split(","):
                r = bench_one(model_name, method_name, amp, batch=a.batch, iters=a.iters, steps=a.steps,
                              device=device)
                print(f"{model_name} {method_name} {amp}: {r['images_per_s']} img/s, attack share "
                      f"{r['attack_share']}", file=sys.stderr, flush=True)
                results.append(r)
    print(json.dumps({"benchmark": "train", "device": str(device), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "machine": platform.machine(),
                      "input": [1, 28, 28], "batch": a.batch, "iters": a.iters,
                      "wall_s": round(time.perf_counter() - t0, 1), "results": results}, indent=1))


if __name__ == "__main__":
    main()
