"""GPU check: every method, every attack, AMP and torch.compile, a torchrun run, per-pass speeds.

On a CUDA machine, in under 5 minutes (a time budget, `--budget`, skips what is left), on
synthetic CIFAR-shaped data (3 x 32 x 32, 10 classes), each item passes or fails:
  train/METHOD/AMP/eager|compiled   one tiny epoch of every registered method through the trainer
                                    (`darht.engine.trainer.train`), amp none / bf16 / fp16, compile
                                    off / on (compiled: channels_last too; a silent fallback to eager
                                    counts as a failure); finite losses, img/s from metrics.jsonl
  attack/NAME[/randomized]          every registered attack on a batch (few steps): x_adv on x's
                                    device, float32, in [0, 1] and the eps ball; on a randomized
                                    DARHT student with EOT, through its strongest-point mode
  evaluate, transfer                `evaluate` (both faces, EOT sweep) and `student_transfer` /
                                    `transfer_matrix` on the stored uint8 images, on the GPU
  ddp/torchrun-cli                  `torchrun --standalone --nproc_per_node 1 -m darht train ...`
  ddp/nccl                          under torchrun, a 1-rank NCCL group: MTARD trains with its
                                    all_reduce, a DistributedDataParallel step (two forwards, the
                                    attack on the bare module, one backward), a float64 all_reduce
  pass/MODEL/PASS/PRECISION         the passes of benchmarks/flops.py at the paper's sizes (CIFAR-100,
                                    batch 128): ms per pass, achieved TFLOP/s, and the prediction of
                                    docs/SCALING.md (40% of the stated peak) next to it
  step/table3-darht/SWITCHES        one whole DARHT step of the CIFAR-100 Table 3 student (ResNet-18,
                                    WRN-70-16 + ViT-B/16 teachers, random weights, batch 128):
                                    as configured (bf16), + TF32 attacks + channels_last, + compiled
Prints one JSON object (items with ok / seconds / img_s / peak_mem_mib, a summary); progress
lines go to stderr. Exit code 1 if any item failed; skipped items do not fail.

Without CUDA it says so in one line and exits 0. `--device cpu` runs the same items on the CPU,
smaller and without fp16/compile (to develop this script; not a GPU check).

Usage: python benchmarks/gpu_check.py [--budget 280] [--out results/gpu_check.json] [--only PREFIX]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
EPS = 8 / 255
K, SHAPE = 10, (3, 32, 32)


def no_cuda_line() -> str:
    return (f"gpu_check: no CUDA device on this machine (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}): nothing checked; run it on a GPU machine")


# ---- the item runner ------------------------------------------------------------------------------
class Checks:
    def __init__(self, device: torch.device, budget: float, only: list[str]):
        self.device, self.deadline, self.only = device, time.perf_counter() + budget, only
        self.items: list[dict] = []
        self.cuda = device.type == "cuda"

    def run(self, name: str, fn: Callable[[], dict | None]) -> dict | None:
        if self.only and not any(name.startswith(p) for p in self.only):
            return None
        if time.perf_counter() > self.deadline:
            rec = {"item": name, "ok": None, "skipped": "time budget"}
            self.items.append(rec)
            return rec
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
                extra = dict(fn() or {})
            rec = {"item": name, "ok": bool(extra.pop("ok", True)), **extra}
        except Exception as e:  # noqa: BLE001 - an item's failure is its result
            rec = {"item": name, "ok": False, "error": _error(e)}
        if self.cuda:
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
            rec["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        self.items.append(rec)
        status = "ok" if rec["ok"] else "FAIL"
        print(f"[{status}] {name} ({rec['seconds']} s){'  ' + rec['error'] if 'error' in rec else ''}",
              file=sys.stderr, flush=True)
        return rec


def _error(e: BaseException) -> str:
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}{at}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- training -----------------------------------------------------------------------------------
def teachers_for(cls: type, gpu: bool) -> Any:
    """Random small teachers, one CNN and one ViT (heterogeneous; two CNNs on a CPU, where the ViT
    is slow), in the form the method takes."""
    names = ["small-cnn", "vit-tiny" if gpu else "small-cnn"]
    if cls.teacher_roles:
        return dict(zip(cls.teacher_roles, names))
    return names if cls.needs_teachers else []


def train_item(method: str, amp: str, compiled: bool, device: torch.device, tmp: Path,
               model: str = "small-cnn") -> dict:
    from darht.config import make_config
    from darht.engine.trainer import train
    from darht.registry import METHODS

    cls = METHODS.get(method)
    fields = {f.name for f in dataclasses.fields(cls.Args)}
    gpu = device.type == "cuda"
    n, batch = (320, 64) if gpu else (160, 32)  # 4 steps (+ validation): a tiny epoch
    out = tmp / f"train-{method}-{amp}-{int(compiled)}-{model}"
    cfg = make_config({
        "data": {"name": "synthetic", "val_fraction": 0.2,
                 "kwargs": {"n": n, "num_classes": K, "shape": list(SHAPE), "seed": 1}},
        "model": {"name": model}, "method": method,
        "method_args": {"steps": 2} if "steps" in fields else {},
        "teachers": teachers_for(cls, gpu), "teacher_bf16": amp != "none",
        "epochs": 1, "batch_size": batch, "device": str(device), "amp": amp,
        "compile": compiled, "channels_last": compiled, "eval": {"n": 32 if gpu else 16, "steps": 2},
        "out": str(out), "progress": False})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    fell_back = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    losses = {k: v for k, v in rec.items() if k.startswith("train_") and isinstance(v, float)}
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    res = {"img_s": round(rec["images_per_s"], 1), "train_loss": rec["train_loss"],
           "val_robust": rec.get("val_robust"), "ok": not bad and not (compiled and fell_back)}
    if bad:
        res["error"] = f"non-finite: {', '.join(bad)}"
    if compiled and fell_back:
        res["error"] = f"compile fell back to eager: {fell_back[0][:300]}"
    return res


# ---- attacks, evaluation, transfer ----------------------------------------------------------------
def quick_kwargs(name: str) -> dict:
    """Few iterations of `name` (its iteration keyword from the registry)."""
    from darht.registry import ATTACKS

    meta = ATTACKS.meta(name)
    kw: dict = {}
    if meta.get("steps") == "n_queries":
        kw["n_queries"] = 30
    elif meta.get("steps"):
        kw[meta["steps"]] = 3
    if meta.get("ensemble"):
        kw["n_iter"] = 3
        if name == "autoattack":  # its Square member
            kw["n_queries"] = 30
    if name in ("autoattack", "apgd-t", "fab-t"):
        kw["n_target_classes"] = 2
    if meta.get("eot") == "eot_iter":  # autoattack-rand's EOT 20 (a randomized model's run sets 2)
        kw["eot_iter"] = 1
    return kw


def small_models(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(a deterministic small CNN, a randomized DARHT student), CIFAR-shaped, on the device."""
    from darht.methods.darht import Darht
    from darht.models import create_model

    torch.manual_seed(0)
    det = create_model("small-cnn", K, SHAPE[0], SHAPE[1]).to(device).eval()
    rnd = Darht.build_model("small-cnn", K, SHAPE[0], SHAPE[1], num_teachers=2, mc_samples=4).to(device).eval()
    return det, rnd


def test_data(n: int = 128):
    from darht.data import load_dataset

    return load_dataset("synthetic", "test", n=n, num_classes=K, shape=SHAPE, seed=1)


def attack_item(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, randomized: bool) -> dict:
    from darht.attacks.core import AttackOutput
    from darht.registry import ATTACKS

    meta, kw = ATTACKS.meta(name), quick_kwargs(name)
    device = x.device
    sync(device)
    t0 = time.perf_counter()
    if randomized:
        if meta.get("eot"):
            kw[meta["eot"]] = 2
        strongest = meta.get("strongest")
        out = (strongest(model, x, y, eps=EPS, **kw) if strongest is not None
               else AttackOutput([ATTACKS.get(name)(model, x, y, eps=EPS, **kw)], [name]))
    else:
        out = AttackOutput([ATTACKS.get(name)(model, x, y, eps=EPS, **kw)], [name])
    sync(device)
    dt = time.perf_counter() - t0
    problems = []
    for c in out.candidates:
        if c.device != x.device or c.dtype != torch.float32 or c.shape != x.shape:
            problems.append(f"candidate {c.device} {c.dtype} {tuple(c.shape)}")
        elif (c - x).abs().max().item() > EPS + 1e-5 or c.min().item() < 0 or c.max().item() > 1:
            problems.append("candidate outside the eps ball or [0, 1]")
    if out.verdict is not None and out.verdict.device != x.device:
        problems.append(f"verdict on {out.verdict.device}")
    with torch.no_grad():
        fooled = float((model(out.candidates[0]).argmax(1) != y).float().mean())
    res = {"img_s": round(len(x) / dt, 1), "candidates": len(out.candidates), "fooled": round(fooled, 3),
           "ok": not problems}
    if problems:
        res["error"] = problems[0]
    return res


def evaluate_item(model: torch.nn.Module, device: torch.device) -> dict:
    from darht.evaluation.robustness import evaluate
    from darht.evaluation.spec import EvalSpec

    data = test_data()
    spec = EvalSpec(attacks=["fgsm", "pgd", "apgd-ce", "square"], eps=EPS, n=48, trials=2, batch_size=64,
                    eot=2, draws=2, eot_sweep=[1, 2], progress=False,
                    attack_args={"pgd": {"steps": 2}, "apgd-ce": {"n_iter": 3}, "square": {"n_queries": 30}})
    torch.manual_seed(0)
    rec = evaluate(model, data.x, data.y, spec, device)  # uint8: converted per batch on the device
    ok = rec["randomized"] and "faces" in rec and "eot_sweep" in rec
    return {"ok": ok, "img_s": round(rec["pool"] / rec["wall_time_s"], 1),
            "clean": rec["summary"]["clean"]["mean"], "worst": rec["summary"]["robust"].get("worst", {}).get("mean")}


def transfer_item(student: torch.nn.Module, device: torch.device) -> dict:
    from darht.evaluation.transfer import student_transfer, transfer_matrix
    from darht.models import create_model

    data = test_data()
    torch.manual_seed(0)
    teachers = {f"t{i}": create_model("small-cnn", K, SHAPE[0], SHAPE[1]).to(device).eval() for i in range(2)}
    x, y = data.x.to(device), data.y.to(device)
    kw = {"attack": "pgd", "eps": EPS, "n": 64, "batch_size": 64, "attack_args": {"steps": 2}, "draws": 2}
    t0 = time.perf_counter()
    st = student_transfer(student, teachers, x, y, **kw)
    mx = transfer_matrix(teachers, x, y, **kw)
    return {"img_s": round(len(data) / (time.perf_counter() - t0), 1), "examples": st["all_examples"]["examples"],
            "matrix_examples": mx["examples"]}


# ---- DDP under torchrun -----------------------------------------------------------------------------
def torchrun(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "4", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def ddp_cli_item(device: torch.device, tmp: Path) -> dict:
    import yaml

    out = tmp / "ddp-cli"
    cfg = tmp / "ddp-cli.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"name": "synthetic", "val_fraction": 0.2,
                 "kwargs": {"n": 256, "num_classes": K, "shape": list(SHAPE)}},
        "model": {"name": "small-cnn"}, "method": "pgd-at", "method_args": {"steps": 2}, "epochs": 1,
        "batch_size": 64, "device": str(device), "eval": {"n": 32, "steps": 2}, "out": str(out)}))
    proc = torchrun(["-m", "darht", "train", "--config", str(cfg), "--no-progress"], timeout=240)
    if proc.returncode != 0:
        return {"ok": False, "error": f"rc {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"img_s": round(rec["images_per_s"], 1), "train_loss": rec["train_loss"]}


def ddp_nccl_item(device: torch.device, tmp: Path) -> dict:
    out = tmp / "ddp-child"
    out.mkdir(exist_ok=True)
    proc = torchrun([str(Path(__file__).resolve()), "--ddp-child", str(out), "--device", device.type], timeout=240)
    path = out / "ddp.json"
    if not path.exists():
        return {"ok": False, "error": f"rc {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    res = json.loads(path.read_text())
    if proc.returncode != 0:
        res.update(ok=False, error=res.get("error") or f"rc {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return res


def ddp_child(out: Path, device_type: str) -> int:
    """Runs under torchrun (1 rank): a process group of its own, then the trainer and DDP by hand."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from darht.attacks.pgd import pgd

    result: dict[str, Any] = {"ok": False}
    try:
        if device_type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            device = torch.device("cpu")
            dist.init_process_group("gloo")
        result["backend"] = dist.get_backend()
        # 1. MTARD (all_reduce of its losses whenever a group exists) through the trainer
        res = train_item("mtard", "none", False, device, out)
        result["mtard"] = res
        # 2. a DDP step: two forwards through the wrapper, the attack on the bare module, one backward
        from darht.models import create_model

        torch.manual_seed(0)
        model = create_model("small-cnn", K, SHAPE[0], SHAPE[1]).to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        x = torch.rand(32, *SHAPE, device=device)
        y = torch.randint(0, K, (32,), device=device)
        x_adv = pgd(model, x, y, eps=EPS, steps=2)
        ddp.train()
        loss = F.cross_entropy(ddp(x), y) + F.cross_entropy(ddp(x_adv), y)
        loss.backward()
        grads_ok = all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        # 3. a float64 all_reduce on the backend's device (the trainer's epoch sums)
        t = torch.tensor([1.5, 2.0], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        result.update(ddp_step=grads_ok, all_reduce_f64=t.tolist() == [1.5, 2.0],
                      ok=bool(res.get("ok")) and grads_ok and t.tolist() == [1.5, 2.0])
        if not res.get("ok"):
            result["error"] = f"mtard: {res.get('error')}"
    except Exception as e:  # noqa: BLE001
        result["error"] = _error(e)
    finally:
        (out / "ddp.json").write_text(json.dumps(result))
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0 if result["ok"] else 1


# ---- per-pass speeds, next to benchmarks/flops.py's counts --------------------------------------------
def flops_module():
    spec = importlib.util.spec_from_file_location("darht_bench_flops", ROOT / "benchmarks" / "flops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def fp32_precision(device: torch.device, precision: str):
    """'tf32' or 'ieee' fp32 matmuls/convolutions (CUDA), as the trainer's `tf32` switch sets them."""
    if device.type != "cuda":
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):
        saved = (matmul.fp32_precision, conv.conv.fp32_precision)
        matmul.fp32_precision = conv.conv.fp32_precision = precision
        try:
            yield
        finally:
            matmul.fp32_precision, conv.conv.fp32_precision = saved
    else:
        saved = (matmul.allow_tf32, conv.allow_tf32)
        matmul.allow_tf32 = conv.allow_tf32 = precision == "tf32"
        try:
            yield
        finally:
            matmul.allow_tf32, conv.allow_tf32 = saved


def timed(fn: Callable[[], Any], device: torch.device, min_iters: int, max_s: float = 1.5) -> float:
    """Median seconds of fn() over >= min_iters runs (after 2 warm-up runs)."""
    for _ in range(2 if min_iters > 1 else 0):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or (time.perf_counter() - start < max_s and len(times) < 20):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pass_item(fl, model_name: str, kind: str, prec: str, batch: int, device: torch.device,
              channels_last: bool = False, classes: int = 100, iters: int = 3) -> dict:
    """One pass (attack step / teacher forward / update) of a model: measured time, FLOPs counted on
    meta by flops.py, achieved TFLOP/s and the 40%-of-peak prediction."""
    import torch.nn.functional as F

    from darht.models import create_model

    c, h, _ = SHAPE
    meta_model = fl.on_meta(lambda: create_model(model_name, num_classes=classes, in_chans=c, img_size=h))
    if kind == "attack_step":
        flops = fl.attack_pass(meta_model, batch, SHAPE)[0]
    elif kind == "teacher_forward":
        flops = fl.forward_pass(meta_model, batch, SHAPE)[0]
    else:
        flops = fl.counted(lambda: _update(meta_model, torch.rand(batch, *SHAPE, device="meta"),
                                           torch.zeros(batch, dtype=torch.long, device="meta")))[0]
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=classes, in_chans=c, img_size=h).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(batch, *SHAPE, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16")
    with fp32_precision(device, "tf32" if prec == "tf32" else "ieee"):
        if kind == "attack_step":  # fp32 (autocast off), eval mode, gradient w.r.t. the input only
            model.eval().requires_grad_(False)

            def fn():
                xi = x.clone().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(xi), y), xi)
        elif kind == "teacher_forward":
            model.eval().requires_grad_(False)

            def fn():
                with torch.inference_mode(), amp:
                    model(x)
        else:
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def fn():
                with amp:
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        s = timed(fn, device, iters)
    peak = fl.PEAK[prec]
    return {"batch": batch, "ms": round(1e3 * s, 2), "gflop": round(flops / 1e9, 1),
            "achieved_tflop_s": round(flops / s / 1e12, 2), "img_s": round(batch / s, 1),
            "predicted_ms_at_40pct": round(1e3 * flops / (0.4 * peak), 2),
            "utilisation": round(flops / s / peak, 3)}


def _update(model, x, y):
    import torch.nn.functional as F

    F.cross_entropy(model.train()(x), y).backward()


def table3_step_item(fl, device: torch.device, tf32: bool, channels_last: bool, compiled: bool,
                     batch: int = 128, iters: int = 3) -> dict:
    """One DARHT step of the CIFAR-100 Table 3 student under bf16 autocast (as configured):
    attack (fp32 / TF32), teachers, update, SGD step; random weights."""
    from darht.methods.darht import Darht
    from darht.models import create_model
    from darht.models.teachers import FrozenTeacher

    c, h, _ = SHAPE
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    student = Darht.build_model("resnet18", 100, c, h, num_teachers=2).to(device).to(memory_format=fmt)
    teachers = [FrozenTeacher(create_model(n, num_classes=100, in_chans=c, img_size=h).to(device)
                              .to(memory_format=fmt), bf16=True)
                for n in ("wrn-70-16", "timm:vit_base_patch16_224")]
    net = torch.compile(student) if compiled else student
    method = Darht(net, teachers)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x = torch.rand(batch, *SHAPE, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = method.loss(x, y)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with fp32_precision(device, "tf32" if tf32 else "ieee"):
        s = timed(step, device, iters, max_s=3.0)
    predicted = None
    with contextlib.suppress(Exception):  # flops.py's prediction of this step, at this precision
        counts = fl.step_flops(Darht, "resnet18", {}, {}, [("wrn-70-16", {}), ("timm:vit_base_patch16_224", {})],
                               batch, SHAPE, 100)
        prec = {"attack": "tf32" if tf32 else "fp32", "teachers": "bf16", "update": "bf16"}
        predicted = fl.seconds(counts["flops"], prec, 0.4)
    steps_per_epoch = math.ceil(49_000 / batch)
    return {"batch": batch, "step_ms": round(1e3 * s, 1), "img_s": round(batch / s, 1),
            "predicted_step_ms_at_40pct": None if predicted is None else round(1e3 * predicted, 1),
            "run_100_epochs_h_at_this_speed": round(100 * steps_per_epoch * s / 3600, 2)}


# ---- the plan ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=280.0, help="seconds; items left after it are skipped")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--device", choices=["cuda", "cpu"], help="cpu: develop this script without a GPU")
    ap.add_argument("--only", action="append", default=[], metavar="PREFIX", help="run only items starting so")
    ap.add_argument("--compile", action="store_true", help="with --device cpu: include the compiled items")
    ap.add_argument("--ddp-child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_child is not None:
        return ddp_child(args.ddp_child, args.device or "cuda")
    if args.device is None and not torch.cuda.is_available():
        print(no_cuda_line())
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(no_cuda_line())
        return 0
    sys.path.insert(0, str(ROOT))
    device = torch.device(args.device or "cuda")
    gpu = device.type == "cuda"
    started = time.perf_counter()
    checks = Checks(device, args.budget, args.only)

    import darht.attacks  # noqa: F401
    import darht.methods  # noqa: F401
    from darht.registry import ATTACKS, METHODS

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
           "name": torch.cuda.get_device_name(device) if gpu else "cpu (development run, not a GPU check)"}
    methods = METHODS.names()
    compiled = ["none", "bf16"] if gpu or args.compile else []
    with tempfile.TemporaryDirectory(prefix="darht-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        for m in methods:  # 1. every method, fp32, eager
            checks.run(f"train/{m}/none/eager", lambda m=m: train_item(m, "none", False, device, tmp))
        det, rnd = small_models(device)  # 2. every attack
        data = test_data(64)
        x, y = data.float_x().to(device), data.y.to(device)
        for name in ATTACKS.names():
            checks.run(f"attack/{name}", lambda n=name: attack_item(n, det, x, y, False))
        for name in ATTACKS.names():
            if ATTACKS.meta(name).get("eot") or ATTACKS.meta(name).get("strongest"):
                checks.run(f"attack/{name}/randomized", lambda n=name: attack_item(n, rnd, x, y, True))
        checks.run("evaluate", lambda: evaluate_item(rnd, device))  # 3. evaluation, transfer
        checks.run("transfer", lambda: transfer_item(rnd, device))
        for m in methods:  # 4. AMP (bf16; fp16 after the compiled items)
            checks.run(f"train/{m}/bf16/eager", lambda m=m: train_item(m, "bf16", False, device, tmp))
        checks.run("ddp/torchrun-cli", lambda: ddp_cli_item(device, tmp))  # 5. torchrun
        checks.run("ddp/nccl" if gpu else "ddp/gloo", lambda: ddp_nccl_item(device, tmp))
        fl = flops_module()  # 6. per-pass speeds at the paper's sizes (CPU: tiny batches)
        b = 128 if gpu else 2
        iters = 3 if gpu else 1
        vit = "timm:vit_base_patch16_224"
        passes = [("resnet18", "attack_step", "fp32", b // 2), ("resnet18", "attack_step", "tf32", b // 2),
                  ("resnet18", "update", "bf16", b), ("wrn-70-16", "teacher_forward", "bf16", b),
                  ("wrn-70-16", "teacher_forward", "fp32", b), (vit, "teacher_forward", "bf16", b),
                  ("wrn-34-10", "attack_step", "fp32", b), ("wrn-34-10", "update", "bf16", b),
                  (vit, "attack_step", "fp32", b), (vit, "attack_step", "tf32", b), (vit, "update", "bf16", b)]
        for model_name, kind, prec, batch in passes:
            if prec == "tf32" and not gpu:
                continue
            checks.run(f"pass/{model_name}/{kind}/{prec}",
                       lambda a=(model_name, kind, prec, batch): pass_item(fl, *a, device, iters=iters))
        if gpu:
            checks.run("pass/resnet18/update/bf16/channels_last",
                       lambda: pass_item(fl, "resnet18", "update", "bf16", b, device, channels_last=True))
        sb = 128 if gpu else 4  # 7. one whole Table 3 DARHT step
        checks.run("step/table3-darht/as-configured",
                   lambda: table3_step_item(fl, device, False, False, False, batch=sb, iters=iters))
        if gpu:
            checks.run("step/table3-darht/tf32+channels_last",
                       lambda: table3_step_item(fl, device, True, True, False, batch=sb))
        for amp in compiled:  # 8. torch.compile (slow: late)
            for m in methods:
                checks.run(f"train/{m}/{amp}/compiled", lambda m=m, a=amp: train_item(m, a, True, device, tmp))
        for m in methods if gpu else []:  # 9. fp16 (GradScaler; CUDA only)
            checks.run(f"train/{m}/fp16/eager", lambda m=m: train_item(m, "fp16", False, device, tmp))
        if gpu or args.compile:
            checks.run("step/table3-darht/tf32+channels_last+compiled",
                       lambda: table3_step_item(fl, device, True, True, True, batch=sb, iters=iters))
    items = checks.items
    summary = {"passed": sum(i["ok"] is True for i in items), "failed": sum(i["ok"] is False for i in items),
               "skipped": sum(i["ok"] is None for i in items),
               "failed_items": [i["item"] for i in items if i["ok"] is False],
               "seconds": round(time.perf_counter() - started, 1)}
    doc = {"what": "darht GPU check", "command": "python benchmarks/gpu_check.py " + " ".join(argv or sys.argv[1:]),
           "env": env, "budget_s": args.budget, "summary": summary, "items": items}
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
