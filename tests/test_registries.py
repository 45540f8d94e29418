"""Every registered method, attack and model meets its contract, and a new one is one definition
plus its registration: a toy distillation method with two teacher roles, a toy attack and a toy
model, defined inside a test, pass the same checks and train through the unchanged trainer.

The checks are functions, so the parametrized tests (every registered name) and the toy test
run exactly the same code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks.args import check_attack_args
from darht.attacks.core import check_inputs, eval_mode, input_grad, project_linf
from darht.cli.train import method_list
from darht.config import check_run, make_config
from darht.constraints import at_least
from darht.engine.trainer import train
from darht.methods.args import accepted_args, arg, arg_defaults, check_method_args
from darht.methods.base import Method
from darht.methods.darht import inner_attacks
from darht.methods.losses import kl_probs
from darht.models import create_model
from darht.models.io import load_model, save_model
from darht.models.teachers import FrozenTeacher
from darht.registry import ATTACKS, METHODS, MODELS

C, SIZE = 3, 8  # classes, image side: every model here is tiny


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def restore_registries():
    """Registrations made by a test are undone afterwards."""
    saved = [(r, dict(r._items), dict(r._meta)) for r in (METHODS, ATTACKS, MODELS)]
    yield
    for r, items, meta in saved:
        r._items.clear(), r._items.update(items)
        r._meta.clear(), r._meta.update(meta)


def batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, SIZE, SIZE, generator=g), torch.arange(n) % C


def tiny_teacher(seed: int) -> FrozenTeacher:
    torch.manual_seed(seed)
    return FrozenTeacher(create_model("small-cnn", C, in_chans=1, img_size=SIZE, width=4))


# ---- the checks ---------------------------------------------------------------------------------
def check_method(name: str, backbone: str = "small-cnn", backbone_kwargs: dict | None = None) -> None:
    """One tiny step: declared arguments accepted at their defaults, loss finite, every other
    output a detached scalar, gradients reach the student, teachers untouched, train mode kept."""
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and cls.name == name, f"{name}: subclass Method and set name = '{name}'"
    check_method_args(cls, arg_defaults(cls))
    n_teachers = len(cls.teacher_roles) or (2 if cls.needs_teachers else 0)
    teachers = [tiny_teacher(10 + j) for j in range(n_teachers)]
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    torch.manual_seed(0)
    model = cls.build_model(backbone, C, 1, SIZE, num_teachers=n_teachers, **({"width": 4} if backbone_kwargs is None else backbone_kwargs))
    fast = {"steps": 1} if "steps" in accepted_args(cls) else {}
    method = cls(model, teachers=teachers, **fast)
    model.train()
    x, y = batch()
    method.start_epoch(0, 2)
    out = method.loss(x, y)
    loss = out["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss), f"{name}: loss {loss}"
    for k, v in out.items():
        if k != "loss":
            assert torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad, f"{name}: output {k}"
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: no gradient reaches the student"
    assert model.training, f"{name}: the loss left the model in eval mode"
    for t, b in zip(teachers, before):
        assert all(p.grad is None and not p.requires_grad for p in t.parameters())
        assert all(torch.equal(v, b[k]) for k, v in t.state_dict().items()), f"{name}: a teacher changed"


def check_attack_metadata(name: str) -> None:
    """What the registry says of an attack is true of it: a new attack that forgets or misstates
    a fact fails here (white-box flag, paper defaults, its EOT/steps keywords, training settings)."""
    meta = ATTACKS.meta(name)
    assert isinstance(meta.get("white_box"), bool), f"{name}: register white_box=True/False"
    assert "paper_defaults" in meta, f"{name}: register paper_defaults"
    check_attack_args(name, meta.get("paper_defaults") or {})
    if meta.get("eot"):
        check_attack_args(name, {meta["eot"]: 3})
    if meta.get("steps"):  # validation during training sets eval.steps through this keyword
        check_attack_args(name, {meta["steps"]: 3})
    if meta.get("training") is not None:  # an inner maximisation DARHT can train against
        training = dict(meta["training"])
        assert 0 <= training.pop("eps", 0) <= 1
        check_attack_args(name, training)
        assert name in inner_attacks()
    if meta.get("strongest") is not None:
        assert callable(meta["strongest"]) and "min_classes" in meta


def check_attack_contract(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.1,
                          **kw: Any) -> torch.Tensor:
    """Shape and dtype kept, inside the eps ball and [0, 1], the model's modes and gradients as they were."""
    model.train()
    modes = [m.training for m in model.modules()]
    x_adv = ATTACKS.get(name)(model, x, y, eps=eps, **kw)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max().item() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    return x_adv


def check_model(name: str, chans: int = 3, size: int = 32, **kwargs: Any) -> None:
    """Forward/feature/head contract, input gradients, and a save/load round trip."""
    model = create_model(name, 5, in_chans=chans, img_size=size, **kwargs).eval()
    x = torch.rand(2, chans, size, size, requires_grad=True)
    torch.manual_seed(1)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    torch.manual_seed(1)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features)
    torch.manual_seed(1)
    assert torch.allclose(model.forward_head(model.forward_features(x)), out)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, f"{name}: attacks need input gradients"
    spec = model.spec
    assert (spec["name"], spec["num_classes"], spec["in_chans"], spec["img_size"]) == (name, 5, chans, size)
    return model


def check_model_roundtrip(name: str, tmp_path, **kwargs: Any) -> None:
    model = create_model(name, 5, in_chans=3, img_size=32, **kwargs).eval()
    x = torch.rand(2, 3, 32, 32)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m.safetensors")
    torch.manual_seed(2)
    a = model(x)
    torch.manual_seed(2)
    assert torch.equal(loaded(x), a)


# ---- every registered one ---------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_takes_one_step(name):
    check_method(name)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_matches_its_registered_metadata(name):
    check_attack_metadata(name)


# ---- a new method, attack and model: one definition + one registration each --------------------
def test_toy_method_attack_and_model_are_picked_up(restore_registries, tmp_path):
    @MODELS.register("toy-net")
    def toy_net(num_classes: int, in_chans: int = 3, img_size: int = 32, *, hidden: int = 16) -> nn.Module:
        class ToyNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.num_features = hidden
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, hidden), nn.ReLU())
                self.fc = nn.Linear(hidden, num_classes)

            def forward_features(self, x):
                return self.body(x)

            def forward_head(self, h):
                return self.fc(h)

            def forward(self, x):
                return self.forward_head(self.forward_features(x))

        return ToyNet()

    @ATTACKS.register("toy-fgsm", eot=None, steps=None, white_box=True, paper_defaults={},
                      training={"eps": 0.05})
    def toy_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255) -> torch.Tensor:
        """One signed-gradient step on CE."""
        check_inputs(x, y, eps, 1)
        with eval_mode(model):
            g = input_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="sum"))
            return project_linf(x + eps * g.sign(), x, eps).detach()

    @METHODS.register("toy-two-roles")
    class ToyTwoRoles(Method):
        """Match the robust teacher on x' and the plain one on x, weighted by `mix`."""

        @dataclasses.dataclass(frozen=True)
        class Args:
            eps: float = 8 / 255
            mix: float = arg(0.5, at_least(0))

        name = "toy-two-roles"
        needs_teachers = True
        teacher_roles = ("robust", "plain")

        def loss(self, x, y):
            x_adv = self.perturb(ATTACKS.get("toy-fgsm"), x, y, eps=self.args.eps)
            with torch.no_grad():
                p_rob = F.softmax(self.teacher("robust")(x_adv), -1)
                p_plain = F.softmax(self.teacher("plain")(x), -1)
            kl_adv = kl_probs(p_rob, F.log_softmax(self.model(x_adv), -1)).mean()
            kl_nat = kl_probs(p_plain, F.log_softmax(self.model(x), -1)).mean()
            return {"loss": kl_adv + self.args.mix * kl_nat, "kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach()}

    # the same checks as every registered component
    check_model("toy-net")
    check_model("toy-net", chans=1, size=SIZE, hidden=4)
    check_model_roundtrip("toy-net", tmp_path)
    check_attack_metadata("toy-fgsm")
    torch.manual_seed(0)
    model = create_model("toy-net", C, in_chans=1, img_size=SIZE)
    check_attack_contract("toy-fgsm", model, *batch())
    check_method("toy-two-roles", backbone="toy-net", backbone_kwargs={})
    check_method("darht", backbone="toy-net", backbone_kwargs={})  # a toy backbone under the DARHT head
    assert "toy-fgsm" in inner_attacks()  # DARHT finds the new attack through the registry
    assert "toy-two-roles [teacher roles: robust, plain]: eps, mix" in method_list(distill=True)
    assert "toy-two-roles" not in method_list(distill=False)

    # the config, the trainer and the evaluation need no edit: roles by name, a new attack for
    # DARHT's inner maximisation and for validation, a new model as student and as backbone
    data = {"name": "synthetic", "kwargs": {"n": 24, "num_classes": C, "shape": [1, SIZE, SIZE]},
            "augment": False, "val_fraction": 0.25}
    common = {"data": data, "epochs": 1, "batch_size": 8, "device": "cpu", "progress": False,
              "eval": {"attack": "toy-fgsm", "steps": 1, "n": 6}}
    with pytest.raises(Exception, match="one teacher per role: robust, plain; got natural"):
        check_run(make_config({**common, "method": "toy-two-roles", "teachers": {"natural": "small-cnn"}}))
    runs = {
        "toy": {"method": "toy-two-roles", "model": {"name": "toy-net"},
                "teachers": {"plain": "small-cnn", "robust": "small-cnn"}},
        "darht": {"method": "darht", "model": {"name": "toy-net"}, "teachers": ["small-cnn"],
                  "method_args": {"attack": "toy-fgsm"}},
    }
    for run, raw in runs.items():
        cfg = make_config({**common, **raw, "out": str(tmp_path / run)})
        check_run(cfg)
        summary = train(cfg)
        assert summary["epochs"] == 1 and math.isfinite(summary["best_val_clean"])
        assert (tmp_path / run / "best.safetensors").is_file()


def test_teacher_roles_from_config_cli_and_old_checkpoints(tmp_path):
    from darht.cli import main
    from darht.engine.resume import config_differences
    from darht.methods.base import teacher_specs
    from darht.config import to_dict
    from darht.errors import DarhtError

    mtard = METHODS.get("mtard")
    assert teacher_specs(mtard, {"natural": "n", "adversarial": "a"}) == ["a", "n"]  # role order
    assert teacher_specs(mtard, ["a", "n"]) == ["a", "n"]
    for bad, words in [({"adversarial": "a"}, "one teacher per role: adversarial, natural; got adversarial"),
                       (["a"], "needs exactly 2 teachers (adversarial, natural), got 1"), ([], "distills from teachers")]:
        with pytest.raises(DarhtError, match=words.replace("(", r"\(").replace(")", r"\)")):
            teacher_specs(mtard, bad)
    with pytest.raises(DarhtError, match="takes a list of teachers, not roles"):
        teacher_specs(METHODS.get("rslad"), {"natural": "n"})
    with pytest.raises(DarhtError, match="trains without teachers"):
        teacher_specs(METHODS.get("trades"), ["a"])
    with pytest.raises(DarhtError, match="teacher_natural was replaced by teacher roles"):
        make_config({"method": "mtard", "teachers": ["a"], "teacher_natural": "n"})
    # a checkpoint written before roles kept the natural teacher in teacher_natural: same run
    old = to_dict(make_config({"method": "mtard", "teachers": ["a", "n"]}))
    old["teachers"], old["teacher_natural"] = ["a"], "n"
    new = to_dict(make_config({"method": "mtard", "teachers": {"natural": "n", "adversarial": "a"}}))
    assert config_differences(old, new) == []
    swapped = to_dict(make_config({"method": "mtard", "teachers": {"natural": "a", "adversarial": "n"}}))
    assert config_differences(old, swapped) == ['teachers ["a", "n"] -> ["n", "a"]']
    # the CLI: --teacher-role ROLE=SPEC, checked before any work
    base = ["distill", "--method", "mtard", "--data", "synthetic", "--student", "small-cnn", "--no-progress",
            "--out", str(tmp_path / "r")]
    for extra in (["--teacher-role", "natural=small-cnn"], ["--teacher-role", "natural"],
                  ["--teacher", "small-cnn", "--teacher-role", "natural=small-cnn"]):
        assert main(base + extra) == 2
    assert not (tmp_path / "r").exists()
