"""FLOPs of one training step of every stage of the paper configs, and predicted GPU wall times.

For each `configs/paper/*.yaml` and each stage it trains (teachers with a training spec, and
students), one training step at the configured batch size is split into
  attack    the inner maximisation: K x (forward + input-gradient backward) of the model being
            trained, in eval mode, on the examples it attacks (DARHT: adv_prob of the batch, in
            expectation), plus the clean forward of a KL attack's target (TRADES' KL-PGD);
  teachers  the frozen teachers' forwards (no grad);
  update    the trained model's forward(s) on the training inputs and the backward to its weights.
Counted with `torch.utils.flop_counter.FlopCounterMode` on the `meta` device: the models are built
there at their real size and batch, so nothing is computed and nothing is scaled (a FLOP count is
exact for a given shape: convolutions and matmuls, 2 FLOPs per multiply-add; elementwise ops,
norms and softmaxes are not counted). The attack is counted from one recorded call of the
method's inner attack (its batch, steps and loss) and one measured forward+input-backward; the
teachers and the update from `method.loss` + `loss.backward()` with that attack stubbed out.
FAT's and DAT's early stopping can only lower the attack's count: K steps is an upper bound; CAT
is counted at its last lesson (mixed strengths 0..K), also an upper bound.

Per epoch: ceil(train examples / batch) steps, plus validation (`eval.n` examples, `eval.steps`
PGD steps + 2 forwards; for a randomized DARHT student EOT and the verdict's draws sample only the
head, so they cost about one backbone pass). Whole run = epochs x (steps x step + validation).

Predictions, not measurements: time = FLOPs / (utilisation x peak) per phase, at the precision the
phase runs in: attacks always fp32 (autocast off; TF32 tensor cores only with `tf32: true`),
teachers and update in bf16 under `amp: bf16`. Peaks, dense, H100 SXM (H200: the same compute,
more memory bandwidth): bf16 989, TF32 494, fp32 67 TFLOP/s. 8 GPUs: the global batch split 8
ways at the same utilisation (no communication cost counted). Next to it, a dispatch floor: the
kernels one eager step launches (aten ops that are not views) x 10 us each, which small models at
32 px do not hide; CUDA graphs remove it, torch.compile shrinks it. `benchmarks/gpu_check.py`
measures the same passes on a GPU.

Usage: python benchmarks/flops.py [CONFIG.yaml ...] [--util 0.4] [--out results/flops.json] [--markdown]
Prints the JSON (also written to --out) and, on stderr, a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import darht.methods  # noqa: E402,F401 - registers the methods
from darht.config import load_yaml, make_config  # noqa: E402
from darht.methods.base import Method, teacher_specs  # noqa: E402
from darht.models import robustbench  # noqa: E402
from darht.evaluation.spec import DEFAULT_EOT  # noqa: E402
from darht.models import create_model, is_randomized  # noqa: E402
from darht.models.teachers import FrozenTeacher  # noqa: E402
from darht.pipeline import PipelineConfig, _merge  # noqa: E402
from darht.registry import ATTACKS, METHODS  # noqa: E402

PEAK = {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}  # H100 SXM dense TFLOP/s; H200 the same
PEAK_SOURCE = "NVIDIA H100 SXM datasheet, dense (no sparsity); H200 SXM has the same tensor-core peaks"
LAUNCH_S = 10e-6   # host cost of one eager kernel launch (PyTorch dispatch + CUDA launch), assumed
# the data sets' geometry (C, H, W), classes, training and test examples (the configs hold 2% of
# train out for validation)
DATA = {"cifar10": ((3, 32, 32), 10, 50_000, 10_000), "cifar100": ((3, 32, 32), 100, 50_000, 10_000),
        "tiny-imagenet": ((3, 64, 64), 200, 100_000, 10_000)}


# ---- counting -------------------------------------------------------------------------------------
class KernelCount(TorchDispatchMode):
    """aten ops that are not views or metadata (a rough count of eager kernel launches)."""

    SKIP = {"detach", "alias", "lift_fresh", "empty", "empty_like"}

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in self.SKIP:
            self.n += 1
        return func(*args, **(kwargs or {}))


def counted(fn) -> tuple[int, int]:
    """(FLOPs, kernels) of fn()."""
    with FlopCounterMode(display=False) as fc, KernelCount() as kc:
        fn()
    return fc.get_total_flops(), kc.n


def on_meta(build):
    """A module built directly on the meta device (no memory, no init); via the CPU if its
    constructor reads a tensor back."""
    try:
        with torch.device("meta"):
            return build()
    except Exception:  # noqa: BLE001 - e.g. a constructor calling .item()
        return build().to("meta")


def attack_pass(model: torch.nn.Module, n: int, shape: tuple) -> tuple[int, int]:
    """One attack step on n examples: eval-mode forward + backward to the input only."""
    if n == 0:
        return 0, 0
    was = model.training
    model.eval()
    x = torch.rand(n, *shape, device="meta", requires_grad=True)
    y = torch.zeros(n, dtype=torch.long, device="meta")
    try:
        return counted(lambda: F.cross_entropy(model(x), y).backward(inputs=[x]))
    finally:
        model.train(was)


def forward_pass(model: torch.nn.Module, n: int, shape: tuple, train: bool = False) -> tuple[int, int]:
    was = model.training
    model.train(train)
    x = torch.rand(n, *shape, device="meta")
    try:
        with torch.no_grad():
            return counted(lambda: model(x))
    finally:
        model.train(was)


def step_flops(method_cls: type, model_name: str, model_kwargs: dict, method_args: dict,
               teacher_models: list[tuple[str, dict]], batch: int, shape: tuple, classes: int) -> dict:
    """FLOPs (and eager kernels) of one training step, split into attack / teachers / update."""
    c, h, _ = shape
    model = on_meta(lambda: method_cls.build_model(model_name, classes, c, h, num_teachers=len(teacher_models),
                                                   **model_kwargs))
    teachers = [FrozenTeacher(on_meta(lambda n=n, kw=kw: create_model(n, num_classes=classes, in_chans=c,
                                                                        img_size=h, **kw)))
                for n, kw in teacher_models]
    method = method_cls(model, teachers, **method_args)
    method.start_epoch(0, 100)
    if isinstance(getattr(method, "k", None), int) and hasattr(method.args, "start_k"):
        method.k = method.args.steps  # CAT's curriculum counted at its last lesson: an upper bound
    if hasattr(method, "choose"):  # DARHT's coins: every example chosen, scaled by adv_prob below
        method.choose = lambda n, device: torch.ones(n, dtype=torch.bool)
    calls: list[dict] = []
    teacher_counts = [0, 0]

    def stub(self, attack, x, y, **kw):  # records the inner attack's call; costs no FLOPs
        calls.append({"attack": getattr(attack, "__name__", str(attack)), "n": len(x), **kw})
        return (x + 0.0).detach()

    def counted_teacher(forward):
        def run(x):  # nested in the step's count: the teachers' share of it
            out: list = []
            f, k = counted(lambda: out.append(forward(x)))
            teacher_counts[0] += f
            teacher_counts[1] += k
            return out[0]
        return run

    for t in teachers:
        t.forward = counted_teacher(t.forward)
    x = torch.rand(batch, *shape, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    original = Method.perturb
    Method.perturb = stub
    try:
        with fx_config.patch(meta_nonzero_assume_all_nonzero=True):  # any subset taken on meta
            total, kernels = counted(lambda: method.loss(x, y)["loss"].backward())
    finally:
        Method.perturb = original
    # the attack: per call, its steps x one forward+input-backward on its examples; DARHT attacks
    # adv_prob of the batch in expectation (its coins are replaced above: all chosen)
    attack_f = attack_k = 0.0
    frac = getattr(method.args, "adv_prob", 1.0)
    for call in calls:
        steps, eot = call.get("steps", 10), call.get("eot", 1)
        unit_f, unit_k = attack_pass(model, call["n"], shape)
        kl_target = call["attack"] == "trades_pgd" or (call.get("loss") == "kl" and call.get("target_probs") is None)
        fwd_f, fwd_k = forward_pass(model, call["n"], shape) if kl_target else (0, 0)
        attack_f += (steps * eot * unit_f + fwd_f) * frac  # FLOPs are linear in the batch
        attack_k += steps * eot * (unit_k + 8) + fwd_k + 4  # + each step's sign/add/clamp/projection kernels
    update_f = total - teacher_counts[0]
    return {
        "batch": batch, "attack_calls": [{k: v for k, v in c.items() if k in ("attack", "n", "steps", "loss")}
                                         for c in calls],
        "attacked_fraction": frac if calls else 0.0,
        "flops": {"attack": attack_f, "teachers": float(teacher_counts[0]), "update": float(update_f),
                  "total": attack_f + teacher_counts[0] + update_f},
        "kernels": {"attack": attack_k, "teachers": teacher_counts[1], "update": kernels - teacher_counts[1],
                    "total": attack_k + kernels},
        "model_params": sum(p.numel() for p in model.parameters()),
        "validation_per_example": validation_per_example(model, shape),
        "model": model,
    }


def validation_per_example(model: torch.nn.Module, shape: tuple) -> dict[str, int]:
    """FLOPs of one validated example's forward and of one of its attack steps (the caller
    combines them: eval.steps attack steps + the clean and the final forward)."""
    return {"forward": forward_pass(model, 1, shape)[0], "attack_step": attack_pass(model, 1, shape)[0]}


# ---- the configs -----------------------------------------------------------------------------------
def teacher_model(spec: dict, num_classes: int) -> tuple[str, dict]:
    """(model name, kwargs) a pipeline teacher spec builds: `checkpoint: NAME=PATH` (NAME a model
    or a RobustBench name) or `model:`."""
    if "checkpoint" in spec:
        name, sep, _ = str(spec["checkpoint"]).partition("=")
        if not sep:
            raise SystemExit(f"flops: cannot tell the architecture of checkpoint {spec['checkpoint']!r}")
        if robustbench.is_known(name):
            entry = robustbench.lookup(name, num_classes=num_classes)
            return entry.model, dict(entry.kwargs)
        return name, {}
    model = spec.get("model") or {}
    return model.get("name", "small-cnn"), dict(model.get("kwargs") or {})


def stages(path: Path) -> list[dict]:
    cfg = make_config(load_yaml(path), cls=PipelineConfig)
    if cfg.data.name not in DATA:
        raise SystemExit(f"flops: no geometry for data set {cfg.data.name!r}")
    out = []

    def train_cfg(spec: dict, teachers: Any) -> Any:
        stage = {"method": "darht", **spec} if teachers else spec
        raw = _merge(cfg.train, {k: v for k, v in stage.items() if k != "teachers"})
        raw = _merge(raw, {"data": dataclasses.asdict(cfg.data), "teachers": teachers})
        return make_config(raw)

    for name, spec in cfg.teachers.items():
        if "checkpoint" in spec:
            out.append({"kind": "teacher", "name": name, "given": spec["checkpoint"]})
            continue
        out.append({"kind": "teacher", "name": name, "cfg": train_cfg(spec, []), "teachers": []})
    for name, spec in cfg.students.items():
        tcfg = train_cfg(spec, spec.get("teachers") or [])
        order = teacher_specs(METHODS.get(tcfg.method), tcfg.teachers)  # the method's role order
        out.append({"kind": "student", "name": name, "cfg": tcfg, "teachers": order,
                    "teacher_models": [teacher_model(cfg.teachers[t], DATA[cfg.data.name][1]) for t in order]})
    return cfg, out


# evaluation: per example, gradient steps and plain forwards of each attack at its settings (upper
# bounds: APGD's 100 iterations, Square's 5000 queries with no early stop)
PYAUTOATTACK_ITERS = 100


def attack_cost(name: str, settings: dict, randomized: bool, eot: int) -> tuple[float, float] | None:
    """(gradient steps, forwards) per example of evaluation attack `name`; None if not estimated.
    In-house attacks sample only the DARHT head for EOT (about one backbone pass); pyautoattack's
    APGD calls the model eot_iter times per iteration."""
    meta = ATTACKS.meta(name)
    kw = {**(meta.get("paper_defaults") or {}), **settings}
    if name == "fgsm":
        return 1.0, 1.0
    if name in ("pgd", "cw-inf"):
        return float(kw.get("steps", 10 if name == "pgd" else 30)), 1.0
    if name in ("apgd-ce", "apgd-dlr"):
        draws = kw.get("eot_iter", eot) if randomized else 1
        return float(kw.get("n_iter", PYAUTOATTACK_ITERS) * draws), 1.0
    if name == "square":
        return 0.0, float(kw.get("n_queries", 5000))
    return None


def evaluation_flops(pcfg: Any, model: torch.nn.Module, shape: tuple, n_test: int) -> dict:
    """FLOPs of the pipeline's evaluation of one model (both faces of a randomized DARHT student,
    its EOT sweep), from one forward and one attack step per example."""
    spec = dict(pcfg.evaluation)
    n, trials = spec.get("n", 1000), spec.get("trials", 1)
    pool = n * trials if n * trials <= n_test else n_test * (1 - (1 - n / n_test) ** trials)
    fwd, step = forward_pass(model, 1, shape)[0], attack_pass(model, 1, shape)[0]
    randomized = is_randomized(model)
    eot = spec.get("eot") or DEFAULT_EOT
    attacks = spec.get("attacks") or ["fgsm", "pgd", "cw-inf", "apgd-ce", "square"]
    per, skipped = 0.0, []
    for name in attacks:
        cost = attack_cost(name, (spec.get("attack_args") or {}).get(name, {}), randomized, eot)
        if cost is None:
            skipped.append(name)
            continue
        grads, fwds = cost
        per += grads * step + (fwds + 1) * fwd  # + judging the point (draws sample the head only)
        if randomized:  # the deterministic face: the same attacks without EOT
            det = attack_cost(name, (spec.get("attack_args") or {}).get(name, {}), False, 1)
            per += det[0] * step + (det[1] + 1) * fwd
    sweep = [int(e) for e in spec.get("eot_sweep") or []] if randomized else []
    for name in attacks:  # the sweep re-runs the in-house EOT attacks once per setting
        if sweep and ATTACKS.meta(name).get("eot") == "eot" and ATTACKS.meta(name).get("white_box"):
            grads, fwds = attack_cost(name, {}, randomized, eot)
            per += len(sweep) * (grads * step + (fwds + 1) * fwd)
    return {"pool": round(pool), "randomized": randomized, "flops": pool * per, "not_estimated": skipped}


def precision(tcfg: Any) -> dict[str, str]:
    """The precision each phase runs in under this config (what the predictions assume)."""
    amp = "bf16" if tcfg.amp in ("bf16", "fp16") else None  # fp16 has the bf16 peak on H100
    teachers = amp or ("bf16" if tcfg.teacher_bf16 else ("tf32" if tcfg.tf32 else "fp32"))
    return {"attack": "tf32" if tcfg.tf32 else "fp32", "teachers": teachers,
            "update": amp or ("tf32" if tcfg.tf32 else "fp32")}


def seconds(flops: dict, prec: dict, util: float) -> float:
    return sum(flops[p] / (util * PEAK[prec[p]]) for p in ("attack", "teachers", "update"))


def analyse(path: Path, util: float) -> dict:
    pcfg, items = stages(path)
    shape, classes, n_train, n_test = DATA[pcfg.data.name]
    train_n = n_train - int(round(n_train * pcfg.data.val_fraction))
    result = {"config": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
              "data": pcfg.data.name, "train_examples": train_n, "stages": []}
    for item in items:
        if "given" in item:
            result["stages"].append({"kind": item["kind"], "name": item["name"], "given": item["given"]})
            continue
        tcfg = item["cfg"]
        cls = METHODS.get(tcfg.method)
        t0 = time.perf_counter()
        step = step_flops(cls, tcfg.model.name, dict(tcfg.model.kwargs), dict(tcfg.method_args),
                          item.get("teacher_models", []), tcfg.batch_size, shape, classes)
        model = step.pop("model")
        evaluated = item["kind"] == "student" or pcfg.evaluate_teachers
        ev = evaluation_flops(pcfg, model, shape, n_test) if evaluated else None
        if ev is not None:
            ev["predicted_h_1gpu"] = ev["flops"] / (util * PEAK["tf32" if tcfg.tf32 else "fp32"]) / 3600
        steps = math.ceil(train_n / tcfg.batch_size)
        v = step.pop("validation_per_example")
        val = tcfg.eval.n * (tcfg.eval.steps * v["attack_step"] + 2 * v["forward"])
        run = tcfg.epochs * (steps * step["flops"]["total"] + val)
        prec = precision(tcfg)
        step_s = seconds(step["flops"], prec, util)
        val_s = val / (util * PEAK[prec["attack"]])
        one = tcfg.epochs * (steps * step_s + val_s)
        tf32 = {**prec, "attack": "tf32"}  # the `tf32: true` switch: TF32 tensor cores for the attacks
        tf32_s = seconds(step["flops"], tf32, util)
        launch = step["kernels"]["total"] * LAUNCH_S
        result["stages"].append({
            "kind": item["kind"], "name": item["name"], "method": tcfg.method, "model": tcfg.model.name,
            "teachers": [m for m, _ in item.get("teacher_models", [])], "epochs": tcfg.epochs,
            "steps_per_epoch": steps, **step, "validation_flops_per_epoch": val, "run_flops": run,
            "precision": prec,
            "predicted": {
                "step_s_1gpu": step_s, "run_h_1gpu": one / 3600,
                "run_h_8gpu": tcfg.epochs * (steps * step_s / 8 + val_s / 8) / 3600,
                "step_s_1gpu_tf32_attacks": tf32_s,
                "run_h_1gpu_tf32_attacks": tcfg.epochs * (steps * tf32_s + val / (util * PEAK["tf32"])) / 3600,
                "eager_dispatch_floor_step_s": launch,
                "run_h_1gpu_dispatch_floor": tcfg.epochs * steps * launch / 3600,
            },
            "evaluation": ev,
            "counted_in_s": round(time.perf_counter() - t0, 1),
        })
    return result


# ImageNet scale (hypothetical: no config; what Table 3's recipe would cost there): 1.28M images at
# 224 px, 1000 classes, a ResNet-18 student, a WRN-50-2 (RobustBench's ImageNet WRN) and a ViT-B/16
# teacher, batch 128, 100 epochs, the configs' precision (amp bf16, fp32 attacks)
IMAGENET = {"train_examples": 1_281_167, "shape": (3, 224, 224), "classes": 1000, "method": "darht",
            "model": "timm:resnet18", "teachers": ["timm:wide_resnet50_2", "timm:vit_base_patch16_224"],
            "batch": 128, "epochs": 100}


def imagenet_scale(util: float) -> dict:
    d = IMAGENET
    step = step_flops(METHODS.get(d["method"]), d["model"], {}, {}, [(t, {}) for t in d["teachers"]], d["batch"],
                      d["shape"], d["classes"])
    step.pop("model")
    step.pop("validation_per_example")
    steps = math.ceil(d["train_examples"] / d["batch"])
    prec = {"attack": "fp32", "teachers": "bf16", "update": "bf16"}
    out = {**d, "shape": list(d["shape"]), **step, "steps_per_epoch": steps,
           "run_flops": d["epochs"] * steps * step["flops"]["total"], "predicted": {}}
    for name, p in (("as_configured", prec), ("tf32_attacks", {**prec, "attack": "tf32"})):
        s = seconds(step["flops"], p, util)
        out["predicted"][name] = {"step_s_1gpu": s, "run_h_1gpu": d["epochs"] * steps * s / 3600,
                                  "run_h_8gpu": d["epochs"] * steps * s / 8 / 3600,
                                  "images_per_s_1gpu": d["batch"] / s}
    return out


def markdown(results: list[dict], util: float) -> str:
    rows = ["| config | stage | method | model | teachers | attack TFLOP | teachers TFLOP | update TFLOP | "
            "step TFLOP | run PFLOP | 1 GPU h | 8 GPU h | 1 GPU h, TF32 attacks | eager floor h |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for s in r["stages"]:
            if "given" in s:
                rows.append(f"| {Path(r['config']).stem} | {s['name']} | (given: {s['given']}) |" + "  |" * 11)
                continue
            f, p = s["flops"], s["predicted"]
            rows.append(f"| {Path(r['config']).stem} | {s['name']} | {s['method']} | {s['model']} | "
                        f"{', '.join(s['teachers']) or '-'} | {f['attack'] / 1e12:.2f} | {f['teachers'] / 1e12:.2f} | "
                        f"{f['update'] / 1e12:.2f} | {f['total'] / 1e12:.2f} | {s['run_flops'] / 1e15:.0f} | "
                        f"{p['run_h_1gpu']:.2f} | {p['run_h_8gpu']:.2f} | {p['run_h_1gpu_tf32_attacks']:.2f} | "
                        f"{p['run_h_1gpu_dispatch_floor']:.2f} |")
    return "\n".join(rows) + f"\n\n(utilisation {util:.0%} of {PEAK_SOURCE})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="*", type=Path)
    ap.add_argument("--util", type=float, default=0.4, help="assumed fraction of peak (default 0.4)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "flops.json")
    ap.add_argument("--markdown", action="store_true", help="print the Markdown table instead of the JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    configs = args.configs or sorted((ROOT / "configs" / "paper").glob("*.yaml"))
    t0 = time.perf_counter()
    results = [analyse(p.resolve(), args.util) for p in configs]
    imagenet = imagenet_scale(args.util)
    doc = {"what": "FLOPs of one training step per paper-config stage (FlopCounterMode on the meta device, at the "
                   "configured batch) and predicted wall times", "command": "python benchmarks/flops.py",
           "torch": torch.__version__, "utilisation": args.util, "peak_flops": PEAK, "peak_source": PEAK_SOURCE,
           "launch_s_assumed": LAUNCH_S, "results": results, "imagenet_scale": imagenet, "seconds": round(time.perf_counter() - t0, 1)}
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.markdown:
        print(markdown(results, args.util))
    else:
        print(text)
        print(markdown(results, args.util), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
