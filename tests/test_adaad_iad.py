"""AdaAD and IAD: losses against their formulas, AdaAD's teacher-student attack, IAD's trust weights
and warm-up, frozen teachers, argument checks, and `darht distill` end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from darht.attacks.core import eval_mode
from darht.cli import main
from darht.errors import DarhtError
from darht.methods import adaad as adaad_mod
from darht.methods import iad as iad_mod
from darht.models import create_model
from darht.models.teachers import FrozenTeacher
from darht.registry import METHODS

K, C, S = 10, 1, 12  # classes, channels, image size
SMALL = {"width": 4}


def batch(n: int = 6, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, C, S, S, generator=g), torch.randint(0, K, (n,), generator=g)


def sharp(net: torch.nn.Module, scale: float = 4.0) -> torch.nn.Module:
    """A random small CNN with logits of std ~`scale` (random init is near uniform)."""
    probe, _ = batch(16, seed=99)
    with torch.no_grad():
        net.classifier_head.weight.mul_(scale / net.eval()(probe).std())
        net.classifier_head.bias.uniform_(-2.0, 2.0)
    return net


def teachers(j: int, seed: int = 1, bf16: bool = False) -> list[FrozenTeacher]:
    torch.manual_seed(seed)
    return [FrozenTeacher(sharp(create_model("small-cnn", K, C, S, **SMALL)), bf16=bf16) for _ in range(j)]


def student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return sharp(create_model("small-cnn", K, C, S, **SMALL), 2.0).train()


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from the definition."""
    return (p * (p.log() - q.log())).sum(-1)


def shift(x: torch.Tensor) -> torch.Tensor:
    return (x + 0.03).clamp(0, 1)


def fake_attack(record: dict):
    def attack(model, x, y, **kw):
        record.update(kw, model=model)
        return shift(x)
    return attack


def mean_probs(ts, x, t: float = 1.0) -> torch.Tensor:
    return torch.stack([F.softmax(T(x) / t, 1) for T in ts]).mean(0)


# -- AdaAD ----------------------------------------------------------------------------------------
def test_adaad_loss_equals_direct(monkeypatch) -> None:
    rec: dict = {}
    monkeypatch.setattr(adaad_mod, "adaad_pgd", fake_attack(rec))
    ts, net = teachers(2), student()
    method = METHODS.get("adaad")(net, ts, alpha=0.7, eps=0.05, step_size=0.01, steps=3)
    x, y = batch()
    out = method.loss(x, y)
    assert rec["model"] is net and rec["teachers"] == ts
    assert (rec["eps"], rec["alpha"], rec["steps"]) == (0.05, 0.01, 3)
    xa = shift(x)
    adv = kl_rows(mean_probs(ts, xa), F.softmax(net(xa), 1)).mean()  # KL(T(x') || S(x')), teachers at x'
    nat = kl_rows(mean_probs(ts, x), F.softmax(net(x), 1)).mean()
    assert torch.allclose(out["loss"], 0.7 * adv + 0.3 * nat, atol=1e-5)
    assert torch.allclose(out["kl_adv"], adv, atol=1e-5) and torch.allclose(out["kl_nat"], nat, atol=1e-5)
    # the paper's alpha = 1: the adversarial term alone, no clean forward
    default = METHODS.get("adaad")(net, ts[:1])
    assert default.args.alpha == 1.0 and default.args.steps == 10
    out = default.loss(x, y)
    assert "kl_nat" not in out
    assert torch.allclose(out["loss"], kl_rows(F.softmax(ts[0](xa), 1), F.softmax(net(xa), 1)).mean(), atol=1e-5)


def test_adaad_teacher_log_probs_and_gradient() -> None:
    ts = teachers(2)
    x, _ = batch()
    lp = adaad_mod.teacher_log_probs(ts, x)
    assert torch.allclose(lp.exp(), mean_probs(ts, x), atol=1e-6)
    assert torch.allclose(adaad_mod.teacher_log_probs(ts[:1], x), F.log_softmax(ts[0](x), 1), atol=1e-6)
    xi = x.clone().requires_grad_(True)  # the FrozenTeacher gives none; the attack's path does
    z = adaad_mod.teacher_logits(ts[0], xi)
    assert torch.allclose(z, ts[0](x), atol=1e-5)
    (g,) = torch.autograd.grad(z.sum(), [xi])
    assert g.abs().sum() > 0
    assert all(p.grad is None for p in ts[0].parameters()) and not any(m.training for m in ts[0].modules())
    bf = teachers(1, bf16=True)[0]
    zb = adaad_mod.teacher_logits(bf, x)
    assert zb.dtype == torch.float32 and torch.allclose(zb, bf(x), atol=1e-3)  # the teacher's own bf16 forward


def test_adaad_attack_in_ball_increases_disagreement_and_restores_modes() -> None:
    ts, net = teachers(1), student()
    x, y = batch(8)
    eps = 0.05
    method = METHODS.get("adaad")(net, ts, eps=eps, step_size=eps / 4, steps=8)
    modes = [m.training for m in net.modules()]
    x_adv = method.perturb(adaad_mod.adaad_pgd, x, y, teachers=ts, eps=eps, alpha=eps / 4, steps=8, start="none")
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert [m.training for m in net.modules()] == modes  # the student is back in train mode
    assert all(p.grad is None for p in net.parameters())  # input gradients only
    for T in ts:
        assert all(p.grad is None and not p.requires_grad for p in T.parameters())
        assert not any(m.training for m in T.modules())
    torch.manual_seed(5)
    noise = (x + eps * torch.randn_like(x).sign()).clamp(0, 1)  # a random corner of the same ball
    with torch.no_grad(), eval_mode(net):
        before = adaad_mod.disagreement(net, ts, x)
        after = adaad_mod.disagreement(net, ts, x_adv)
        rand = adaad_mod.disagreement(net, ts, noise)
    assert (after > before).all(), (before, after)  # every example's KL(T || S) went up
    assert after.sum() > rand.sum() and after.sum() > before.sum() + 0.02, (before.sum(), after.sum(), rand.sum())
    # a random start stays inside the ball too
    x_rnd = adaad_mod.adaad_pgd(net, x, None, teachers=ts, eps=eps, alpha=eps / 4, steps=1)
    assert (x_rnd - x).abs().max() <= eps + 1e-6 and x_rnd.min() >= 0 and x_rnd.max() <= 1


# -- IAD ------------------------------------------------------------------------------------------
def test_iad_trust_weights_by_hand() -> None:
    ts = teachers(1)
    net = student()
    method = METHODS.get("iad")(net, ts, beta=0.5)
    x, y = batch()
    w = method.trust(x, y)
    p = F.softmax(ts[0](x), 1)
    hand = torch.tensor([p[i, y[i]].item() ** 0.5 for i in range(len(y))])
    assert torch.allclose(w, hand, atol=1e-6) and not w.requires_grad
    two = teachers(2)
    w2 = METHODS.get("iad")(net, two).trust(x, y)  # several teachers: their mean probability, beta 0.1
    pm = mean_probs(two, x)
    assert torch.allclose(w2, torch.tensor([pm[i, y[i]].item() ** 0.1 for i in range(len(y))]), atol=1e-6)


@pytest.mark.parametrize("epoch", [1, 4])  # before / after the warm-up (begin 0.3 of 10 epochs)
def test_iad_loss_equals_direct(monkeypatch, epoch: int) -> None:
    rec: dict = {}
    monkeypatch.setattr(iad_mod, "pgd", fake_attack(rec))
    ts, net = teachers(1), student()
    method = METHODS.get("iad")(net, ts, alpha=0.8, t=3.0, beta=0.5)
    method.start_epoch(epoch, 10)
    x, y = batch()
    out = method.loss(x, y)
    assert rec["model"] is net and rec["loss"] == "ce" and rec["start"] == "uniform"
    xa = shift(x)
    s_adv, s_nat = net(xa), net(x)
    kd = 9 * kl_rows(F.softmax(ts[0](x) / 3, 1), F.softmax(s_adv / 3, 1)).mean()  # teacher on CLEAN x
    expect = 0.8 * kd + 0.2 * F.cross_entropy(s_nat, y)
    if epoch >= 3:
        w = F.softmax(ts[0](xa), 1).gather(1, y[:, None]).squeeze(1) ** 0.5  # teacher at x'
        intro = ((1 - w) * kl_rows(F.softmax(s_nat, 1), F.softmax(s_adv, 1))).mean()
        expect = expect + 0.8 * intro
        assert torch.allclose(out["introspection"], intro, atol=1e-5)
        assert torch.allclose(out["trust"], w.mean(), atol=1e-6)
    else:
        assert "introspection" not in out and "trust" not in out
    assert torch.allclose(out["loss"], expect, atol=1e-5)
    assert torch.allclose(out["kd"], kd, atol=1e-5)


def test_iad_warmup_and_defaults() -> None:
    cls = METHODS.get("iad")
    method = cls(student(), teachers(1))
    a = method.args
    assert (a.alpha, a.t, a.beta, a.begin, a.steps) == (1.0, 1.0, 0.1, 0.3, 10)
    on = []
    for e in (0, 59, 60, 199):
        method.start_epoch(e, 200)
        on.append(method.introspecting())
    assert on == [False, False, True, True]  # IAD-I.py: `epoch >= 60` of 200
    method.start_epoch(2, 10)
    assert not method.introspecting()
    method.start_epoch(3, 10)
    assert method.introspecting()
    always = cls(student(), teachers(1), begin=0)
    always.start_epoch(0, 5)
    assert always.introspecting()
    assert cls.original_schedule.milestones == (100, 150) and cls.original_schedule.epochs == 200


# -- both -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["adaad", "iad"])
def test_teachers_stay_frozen_and_student_trains(name: str) -> None:
    ts, net = teachers(2), student()
    before = [{k: v.clone() for k, v in T.state_dict().items()} for T in ts]
    method = METHODS.get(name)(net, ts, steps=2, alpha=0.9)
    method.start_epoch(9, 10)  # IAD past its warm-up: every term runs
    x, y = batch(8)
    out = method.loss(x, y)
    out["loss"].backward()
    assert net.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    for T, b in zip(ts, before):
        assert all(p.grad is None and not p.requires_grad for p in T.parameters())
        assert not T.training and not any(m.training for m in T.model.modules())
        assert all(torch.equal(v, b[k]) for k, v in T.state_dict().items())
    for k, v in out.items():
        assert v.dim() == 0 and torch.isfinite(v) and (k == "loss" or not v.requires_grad), k


@pytest.mark.parametrize("name, bad, word", [
    ("adaad", {"alpha": 1.5}, "alpha"), ("adaad", {"steps": -1}, "steps"), ("adaad", {"eps": 2}, "eps"),
    ("iad", {"beta": -0.1}, "beta"), ("iad", {"begin": 1.2}, "begin"), ("iad", {"t": 0}, "t"),
    ("iad", {"gamma": 1}, "gamma"),
])
def test_bad_args_are_one_line_errors(name: str, bad: dict, word: str) -> None:
    with pytest.raises(DarhtError) as e:
        METHODS.get(name)(student(), teachers(1), **bad)
    msg = str(e.value)
    assert "\n" not in msg and f"method '{name}'" in msg and word in msg, msg
    with pytest.raises(DarhtError, match="teachers"):
        METHODS.get(name)(student(), [])


# -- the command line -----------------------------------------------------------------------------
DATA = ["--data", "synthetic", "--set", "data.kwargs={n: 48, num_classes: 4, shape: [1, 12, 12], seed: 2}",
        "--set", "data.augment=false", "--set", "eval.n=8", "--set", "eval.steps=1", "--batch-size", "16",
        "--no-progress", "--device", "cpu", "--set", "optim.schedule=constant", "--lr", "0.05",
        "--set", "model.kwargs={width: 4}"]


@pytest.mark.parametrize("name, args", [("adaad", "{steps: 1, eps: 0.03, alpha: 0.5}"),
                                        ("iad", "{steps: 1, eps: 0.03, begin: 0.5}")])
def test_distill_cli_end_to_end(name: str, args: str, tmp_path) -> None:
    out = tmp_path / name
    argv = ["distill", "--student", "small-cnn", "--teacher", "small-cnn", "--method", name,
            "--epochs", "2", "--out", str(out), "--set", f"method_args={args}", *DATA]
    assert main(argv) == 0
    assert (out / "best.safetensors").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    if name == "adaad":
        assert all(m["train_kl_adv"] >= 0 and m["train_kl_nat"] >= 0 for m in metrics)
    else:  # warm-up for the first half, introspection after
        assert "train_introspection" not in metrics[0]
        assert metrics[1]["train_introspection"] >= 0 and 0 < metrics[1]["train_trust"] <= 1
