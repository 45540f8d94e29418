"""GPU-only bugs, caught on a CPU machine.

A tensor created without `device=` lands on the CPU; on a CPU-only machine that is also the data's
device, so such a bug passes every ordinary CPU test and only fails on a GPU (MTARD's weights were
`torch.tensor(w)`: the trainer's end-of-epoch `torch.stack` of the loss parts then mixed CUDA and
CPU tensors). Three ways to see it here:
  - run a training step on the `meta` device: a CPU-created tensor shows up with device cpu, and a
    meta tensor has no data, so a host sync (`.item()`, `.tolist()`, `float(t)`) raises;
  - a static check of the training code: every tensor factory gets a `device=`;
  - check dtypes and devices of real CPU steps, with and without bf16 autocast (no float64).
Evaluation and transfer take the stored uint8 images and convert each batch on the device
(bit-identical to `float_x()` of the whole split), and the pipeline runs them on its device.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.fx.experimental._config as fx_config

import darht.methods  # noqa: F401 - registers every method
from darht import pipeline as pipeline_mod
from darht.config import make_config
from darht.data import load_dataset
from darht.evaluation import robustness
from darht.evaluation.robustness import evaluate
from darht.evaluation.spec import EvalSpec
from darht.evaluation.transfer import student_transfer, transfer_matrix
from darht.methods.base import Method
from darht.models import create_model
from darht.models.teachers import FrozenTeacher
from darht.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
K, C, S = 10, 3, 16
FAST = {"steps": 1}  # for every method that has an inner attack


def _method(name: str, device: str = "cpu") -> Method:
    cls = METHODS.get(name)
    j = len(cls.teacher_roles) or (2 if cls.needs_teachers else 0)
    torch.manual_seed(0)
    teachers = [FrozenTeacher(create_model("small-cnn", K, C, S, width=8).to(device)) for _ in range(j)]
    model = cls.build_model("small-cnn", K, C, S, num_teachers=j, width=8).to(device)
    fields = {f.name for f in dataclasses.fields(cls.Args)}
    return cls(model, teachers, **{k: v for k, v in FAST.items() if k in fields})


def _batch(device: str = "cpu", n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, C, S, S, generator=g), torch.randint(0, K, (n,), generator=g)
    return x.to(device), y.to(device)


def _stub_attack(self, attack, x, y, **kw):
    """A device-agnostic stand-in for the inner attack (the attacks check their input range, a
    data-dependent host read that the meta device cannot do; attacks are tested on their own)."""
    return (x + 0.03 * torch.randn_like(x).sign()).clamp(0, 1).detach()


# ---- methods --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS.names())
def test_training_step_on_meta_device_creates_nothing_on_the_cpu(name, monkeypatch) -> None:
    """Two steps (MTARD's second one uses the weights kept from the first) on the meta device:
    every output is on x's device, float32 and 0-dim, and the step has no host sync (a meta tensor
    has no data to read). Before the fix MTARD failed here: `.tolist()` of its losses (a host sync
    per step), then its weights as CPU tensors."""
    monkeypatch.setattr(Method, "perturb", _stub_attack)
    method = _method(name, "meta")
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):  # DARHT's adversarial subset
        for step in range(2):
            x, y = _batch("meta", seed=step)
            out = method.loss(x, y)
    assert out["loss"].requires_grad
    for key, v in out.items():
        assert isinstance(v, torch.Tensor), key
        assert v.device == x.device, f"{name}: '{key}' is on {v.device}, the batch on {x.device}"
        assert v.dtype == torch.float32 and v.dim() == 0, f"{name}: '{key}' is {v.dtype} {tuple(v.shape)}"
        assert key == "loss" or not v.requires_grad, key


@pytest.mark.parametrize("name", ["darht", "darht-official"])
def test_darht_picks_its_adversarial_rows_without_reading_the_device(name, monkeypatch) -> None:
    """DARHT's coins are drawn on the host, so choosing the attacked rows (`nonzero`) never waits
    for the accelerator: on the meta device, whose tensors have no data, a step runs without
    torch's assume-all-nonzero switch (with coins drawn on the device, `nonzero` would need it).
    On CPU the draws are those of torch.rand(n) from the global generator, as before."""
    monkeypatch.setattr(Method, "perturb", _stub_attack)
    method = _method(name, "meta")
    with fx_config.patch(meta_nonzero_assume_all_nonzero=False):
        x, y = _batch("meta")
        out = method.loss(x, y)
    assert out["adv_frac"].device == x.device
    torch.manual_seed(3)
    chosen = method.choose(32, torch.device("meta"))
    torch.manual_seed(3)
    coins = torch.rand(1 if method.official else 32)
    assert chosen.device.type == "cpu"
    assert torch.equal(chosen, (coins < method.args.adv_prob).expand(32))


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("name", METHODS.names())
def test_training_step_outputs_no_float64(name, amp) -> None:
    """Real CPU steps with the real attacks, in fp32 and under bf16 autocast: outputs on x's
    device, never float64 (the trainer's sums are the only float64), `loss` float32."""
    method = _method(name)
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = method.loss(x, y)
    out["loss"].backward()
    for key, v in out.items():
        assert v.device == x.device and v.dtype != torch.float64, (key, v.device, v.dtype)
        if not amp:
            assert v.dtype == torch.float32, (key, v.dtype)
    assert out["loss"].dtype == torch.float32


def _factory_calls_without_device(path: Path) -> list[str]:
    factories = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "rand", "randn",
                 "randint", "randperm", "linspace", "eye", "scalar_tensor"}
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in factories
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and not any(k.arg == "device" for k in node.keywords)):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: torch.{node.func.attr}(...) without device=")
    return bad


def _host_syncs(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{node.lineno}: .{node.func.attr}() (a host sync per step)"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("item", "tolist") and not node.args]


def test_training_code_creates_tensors_on_the_inputs_device() -> None:
    """Static: in the methods and attacks (the training step), every torch factory call names its
    device (from the data), and the methods read no tensor back to the host. (The old MTARD had
    both: `torch.tensor(w_adv)` and `pair.tolist()`.) Code paths no test reaches on a GPU (DDP
    branches, early stops) are covered too."""
    files = sorted((ROOT / "darht" / "methods").glob("*.py")) + sorted((ROOT / "darht" / "attacks").glob("*.py"))
    bad = [b for f in files for b in _factory_calls_without_device(f)]
    bad += [b for f in sorted((ROOT / "darht" / "methods").glob("*.py")) for b in _host_syncs(f)]
    assert not bad, "\n".join(bad)


def test_mtard_weights_stay_on_the_device_with_the_python_float_math() -> None:
    """MTARD's adaptive weights are 0-dim tensors on x's device, computed exactly as the documented
    update on Python floats (bit for bit, also the loss); state_dict() holds plain numbers, and a
    resumed method continues identically."""
    method = _method("mtard")
    w, init = 0.5, None
    for step in range(6):
        method.start_epoch(step // 2, 3, lr_scale=0.5 ** (step // 2))
        x, y = _batch(seed=step)
        out = method.loss(x, y)
        l_adv, l_nat = out["kl_adv"].item(), out["kl_nat"].item()  # fp32 values, read as Python floats
        init = init or (l_adv, l_nat)
        r_adv, r_nat = l_adv / max(init[0], 1e-12), l_nat / max(init[1], 1e-12)
        w -= method.args.eta * method.lr_scale * (w - r_nat / max(r_adv + r_nat, 1e-12))
        assert isinstance(method.w_nat, torch.Tensor) and method.w_nat.device == x.device
        assert method.w_nat.item() == w, step
        assert torch.equal(out["loss"], (1.0 - w) * out["kl_adv"] + w * out["kl_nat"]), step
        assert out["w_nat"].item() == torch.tensor(w, dtype=torch.float32).item()
        if step == 3:
            state = method.state_dict()
            assert all(isinstance(v, float) for v in state.values()), state
            json.dumps(state)
            resumed = _method("mtard")
            resumed.load_state_dict(state)
            resumed.start_epoch(step // 2, 3, lr_scale=method.lr_scale)
            method = resumed


# ---- evaluation and transfer: uint8 in, converted per batch ---------------------------------------
def _data(n: int = 40):
    return load_dataset("synthetic", "test", n=n, num_classes=4, shape=(3, 8, 8), seed=1)


def _records_equal(a: dict, b: dict) -> None:
    a, b = dict(a), dict(b)
    a.pop("wall_time_s"), b.pop("wall_time_s")
    assert a == b


@pytest.mark.parametrize("randomized", [False, True])
def test_evaluate_takes_uint8_and_converts_per_batch(randomized, monkeypatch) -> None:
    """evaluate() on the stored uint8 images gives the very record it gives on float_x() of the
    whole split (also for a randomized model: same batches, same RNG stream), and never converts
    more than one batch at a time."""
    data = _data()
    assert data.x.dtype == torch.uint8
    torch.manual_seed(0)
    if randomized:
        model = METHODS.get("darht").build_model("small-cnn", 4, 3, 8, num_teachers=2, width=8, mc_samples=2)
    else:
        model = create_model("small-cnn", 4, 3, 8, width=8)
    spec = EvalSpec(attacks=["fgsm", "pgd"], eps=0.03, n=12, trials=2, batch_size=8, eot=2, draws=3,
                    eot_sweep=[1, 2], attack_args={"pgd": {"steps": 1}}, progress=False)
    sizes: list[int] = []
    real = robustness.device_batch

    def spy(x, device):
        sizes.append(len(x))
        return real(x, device)

    monkeypatch.setattr(robustness, "device_batch", spy)
    torch.manual_seed(1)
    from_uint8 = evaluate(model, data.x, data.y, spec, torch.device("cpu"))
    assert sizes and max(sizes) <= spec.batch_size
    torch.manual_seed(1)
    from_float = evaluate(model, data.float_x(), data.y, spec, torch.device("cpu"))
    _records_equal(from_uint8, from_float)
    assert ("faces" in from_uint8) == randomized and ("eot_sweep" in from_uint8) == randomized


def test_transfer_takes_uint8_with_the_same_results() -> None:
    data = _data(48)
    torch.manual_seed(0)
    models = {f"m{i}": create_model("small-cnn", 4, 3, 8, width=8).eval() for i in range(2)}
    student = METHODS.get("darht").build_model("small-cnn", 4, 3, 8, num_teachers=2, width=8, mc_samples=2).eval()
    kw = {"attack": "fgsm", "eps": 0.03, "n": 20, "batch_size": 8, "draws": 3}
    out = []
    for x in (data.x, data.float_x()):
        torch.manual_seed(2)
        out.append((student_transfer(student, models, x, data.y, **kw), transfer_matrix(models, x, data.y, **kw)))
    assert out[0] == out[1]


# ---- the pipeline's evaluation and transfer stages run on its device -------------------------------
TINY = {
    "name": "tiny", "device": "cpu", "progress": False,
    "data": {"name": "synthetic", "kwargs": {"n": 32, "num_classes": 4, "shape": [3, 8, 8], "seed": 5}},
    "teachers": {"a": {"model": {"name": "small-cnn"}, "method": "standard"},
                 "b": {"model": {"name": "small-cnn"}, "method": "standard"}},
    "students": {"s": {"model": {"name": "small-cnn"}, "method": "rslad", "teachers": ["a", "b"]}},
    "evaluation": {"attacks": ["fgsm"], "n": 8},
    "transfer": {"attack": "fgsm", "n": 8},
}


@pytest.fixture
def spied_pipeline(tmp_path, monkeypatch):
    """A pipeline whose device resolves to `meta` (so anything left on the CPU shows), with the
    stored weights replaced by small models and the stages' work by spies that record what they
    are handed: (pipeline, [(stage, device, x dtype, devices of every model and of y)])."""
    cfg = make_config({**TINY, "out": str(tmp_path / "run")}, cls=pipeline_mod.PipelineConfig)
    pipe = pipeline_mod.Pipeline(cfg, log=lambda *a: None)
    seen: list[tuple[str, torch.device, torch.dtype, set]] = []

    def devices(*models) -> set:
        return {p.device for m in models for p in m.parameters()}

    def fake_evaluate(model, x, y, spec, device):
        seen.append(("evaluate", device, x.dtype, set()))  # evaluate moves the model and each batch itself
        return {}

    def fake_student_transfer(student, teachers, x, y, **kw):
        seen.append(("student_transfer", x.device, x.dtype, devices(student, *teachers.values()) | {y.device}))
        return {}

    def fake_matrix(models, x, y, **kw):
        seen.append(("transfer_matrix", x.device, x.dtype, devices(*models.values()) | {y.device}))
        return {}

    def small(*a, **k):
        return create_model("small-cnn", 4, 3, 8, width=8)

    for name, fn in {"resolve_device": lambda _: META, "load_model": small, "load_attackable": small,
                     "read_meta": lambda _: {}, "model_info": lambda *a, **k: {}, "evaluate": fake_evaluate,
                     "evaluation_record": lambda *a, **k: {}, "transfer_record": lambda *a, **k: {},
                     "student_transfer": fake_student_transfer, "transfer_matrix": fake_matrix}.items():
        monkeypatch.setattr(pipeline_mod, name, fn)
    return pipe, seen


META = torch.device("meta")


def test_pipeline_evaluation_hands_uint8_to_evaluate(spied_pipeline) -> None:
    """The evaluation stage passes the stored uint8 images (converted per batch inside evaluate),
    not float_x() of the whole test split, and its device."""
    pipe, seen = spied_pipeline
    pipe.run_evaluation()
    assert seen == [("evaluate", META, torch.uint8, set())]


def test_pipeline_transfer_runs_on_its_device(spied_pipeline) -> None:
    """The transfer stage puts the images (uint8), the labels and every model on the configured
    device; before the fix it ran on the CPU whatever the config said, on float_x() of the split."""
    pipe, seen = spied_pipeline
    pipe.run_transfer()
    assert [s[0] for s in seen] == ["student_transfer", "transfer_matrix"]
    for stage, device, dtype, others in seen:
        assert device == META and dtype == torch.uint8 and others == {META}, (stage, device, dtype, others)
