"""CAT and DAT (docs/SPEC-training.md): the FOSC and its stopping rule, DAT's threshold schedule,
CAT's curriculum and its resumable state, both losses against their formulas, and both methods
trained end to end through the CLI and the engine (a resumed CAT run continues identically)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import darht.methods.cat as cat_mod
import darht.methods.dat as dat_mod
from darht.attacks.fosc import fosc, fosc_pgd
from darht.attacks.pgd import pgd
from darht.errors import DarhtError
from darht.methods.cat import strength_groups
from darht.methods.dat import fosc_threshold
from darht.registry import ATTACKS, METHODS

C = 4  # classes


class Tiny(nn.Module):
    """A small MLP on [B, 3, 2, 2] images."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 2, 2, generator=g)  # pixels near 0 and 1: the box clips
    y = torch.randint(0, C, (8,), generator=g)
    return x, y


def build(name: str, model: nn.Module, **args):
    return METHODS.get(name)(model, teachers=[], **args)


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -F.log_softmax(logits, 1)[torch.arange(len(y)), y].mean()


def ce_grad(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example gradient of each example's own CE (a summed loss separates the examples)."""
    xi = x_adv.detach().clone().requires_grad_(True)
    loss = -F.log_softmax(model(xi), 1)[torch.arange(len(y)), y].sum()
    return torch.autograd.grad(loss, [xi])[0]


class FakeAttack:
    """Stands in for an attack: records its keyword arguments, returns x + 0.01 * steps (clamped)."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, x, y, **kw):
        self.calls.append({"n": len(x), **kw})
        return (x + 0.01 * kw.get("steps", 1)).clamp(0, 1)


# ---------------------------------------------------------------- FOSC
def test_fosc_equals_a_direct_computation():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 2, 2, generator=g)
    x_adv = x + 0.05 * (2 * torch.rand(x.shape, generator=g) - 1)
    grad = torch.randn(x.shape, generator=g)
    eps = 0.1
    expected = []
    for i in range(2):  # eps * sum |g| - sum (x' - x) g, element by element
        l1 = sum(abs(float(v)) for v in grad[i].flatten())
        dot = sum(float(d) * float(v) for d, v in zip((x_adv[i] - x[i]).flatten(), grad[i].flatten()))
        expected.append(eps * l1 - dot)
    torch.testing.assert_close(fosc(x_adv, x, grad, eps), torch.tensor(expected))
    # c = max over the eps ball of <z - x', g>: 0 at its maximiser x + eps sign(g), > 0 inside
    vertex = x + eps * grad.sign()
    torch.testing.assert_close(fosc(vertex, x, grad, eps), torch.zeros(2), atol=1e-6, rtol=0)
    assert (fosc(x_adv, x, grad, eps) > 0).all()


def reference_fosc_pgd(model, x, y, eps, alpha, steps, threshold):
    """DAT's inner loop written out (start = x): step, then check the new iterate."""
    x_adv, active = x.clone(), torch.ones(len(x), dtype=torch.bool)
    for k in range(steps):
        grad = ce_grad(model, x_adv, y)
        if k > 0:
            c = eps * grad.flatten(1).abs().sum(1) - ((x_adv - x).flatten(1) * grad.flatten(1)).sum(1)
            active &= c > threshold
        moved = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
        x_adv = torch.where(active.view(-1, 1, 1, 1), moved, x_adv)
    return x_adv


@pytest.mark.parametrize("compact", [True, False])
def test_fosc_pgd_stops_examples_at_the_threshold(batch, compact):
    x, y = batch
    model = Tiny().eval()
    eps, alpha = 0.1, 0.02
    x1 = torch.min(torch.max(x + alpha * ce_grad(model, x, y).sign(), x - eps), x + eps).clamp(0, 1)
    c1 = fosc(x1, x, ce_grad(model, x1, y), eps)
    lo, hi = c1.sort().values[3:5].tolist()
    threshold = (lo + hi) / 2  # half the examples stop after their first step (none near the line)
    stops = c1 <= threshold
    assert 0 < stops.sum() < len(x)
    out = fosc_pgd(model, x, y, eps=eps, alpha=alpha, steps=4, threshold=threshold, start="none", compact=compact)
    torch.testing.assert_close(out[stops], x1[stops], atol=1e-7, rtol=0)   # stopped: did not move again
    assert ((out[~stops] - x1[~stops]).flatten(1).abs().amax(1) > 0).all()  # the others went on
    torch.testing.assert_close(out, reference_fosc_pgd(model, x, y, eps, alpha, 4, threshold), atol=1e-7, rtol=0)
    assert (out - x).abs().max() <= eps + 1e-6 and out.min() >= 0 and out.max() <= 1


def test_fosc_pgd_extreme_thresholds(batch):
    x, y = batch
    model = Tiny()
    model.train()
    kw = dict(eps=8 / 255, alpha=2 / 255, start="uniform")
    for threshold, steps in ((0.0, 5), (1e9, 1)):  # c_t = 0: PGD-K; huge: one step, then every example stops
        torch.manual_seed(4)
        out = fosc_pgd(model, x, y, steps=5, threshold=threshold, **kw)
        torch.manual_seed(4)
        torch.testing.assert_close(out, pgd(model, x, y, steps=steps, loss="ce", **kw), atol=1e-7, rtol=0)
        assert (out - x).abs().max() <= 8 / 255 + 1e-6 and out.min() >= 0 and out.max() <= 1
    assert model.training  # the mode is restored
    assert torch.equal(fosc_pgd(model, x, y, steps=0, start="none"), x)
    with pytest.raises(DarhtError, match="threshold must be >= 0"):
        fosc_pgd(model, x, y, threshold=-0.1)
    meta = ATTACKS.meta("fosc-pgd")
    assert meta["white_box"] and meta["training"] == {"eps": 0.031, "alpha": 0.031 / 4, "start": "uniform"}


# ---------------------------------------------------------------- DAT
def test_threshold_schedule_values():
    # train_models.py: fosc_max - fosc_max * (ep / dynamic_epoch), clipped at 0; 0.5, T' = 100, T = 120
    released = [max(0.5 - 0.5 * (e / 100), 0.0) for e in range(120)]
    assert [fosc_threshold(e, 120) for e in range(120)] == released
    assert fosc_threshold(0, 120) == 0.5 and fosc_threshold(50, 120) == 0.25 and fosc_threshold(100, 120) == 0.0
    # 12 epochs: T' = 100 * 12 / 120 = 10
    assert [round(fosc_threshold(e, 12), 10) for e in range(12)] == [0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15,
                                                                      0.1, 0.05, 0.0, 0.0]
    assert fosc_threshold(5, 12, scale=False) == pytest.approx(0.475)  # T' = 100 absolute epochs
    assert fosc_threshold(3, 10, c_max=1.0, control_epochs=4, original_epochs=8) == pytest.approx(0.4)


def test_dat_passes_the_epochs_threshold_and_loss_is_ce(batch, monkeypatch):
    x, y = batch
    model, fake = Tiny(), FakeAttack()
    monkeypatch.setattr(dat_mod, "fosc_pgd", fake)
    method = build("dat", model)
    for e in (0, 50, 110):
        method.start_epoch(e, 120)
        out = method.loss(x, y)
        assert out["c_t"].item() == pytest.approx(fosc_threshold(e, 120))
    assert [c["threshold"] for c in fake.calls] == [fosc_threshold(e, 120) for e in (0, 50, 110)]
    assert {k: v for k, v in fake.calls[0].items() if k != "threshold"} == dict(
        n=8, eps=0.031, alpha=0.031 / 4, steps=10, start="uniform")
    z = model(fake(model, x, y, steps=10)).detach()
    torch.testing.assert_close(out["loss"], ce(z, y))
    assert out["loss"].requires_grad and not out["ce"].requires_grad


def test_dat_loss_weighting_is_the_released_codes(batch, monkeypatch):
    x, y = batch
    model, fake = Tiny(), FakeAttack()
    monkeypatch.setattr(dat_mod, "fosc_pgd", fake)
    method = build("dat", model, loss_weighting=True)
    method.start_epoch(0, 4)
    z = model(fake(model, x, y, steps=10)).detach()
    torch.testing.assert_close(method.loss(x, y)["loss"], ce(z, y))  # the first epoch is unweighted
    method.start_epoch(1, 4)
    ce_i = -F.log_softmax(z, 1)[torch.arange(len(y)), y]
    torch.testing.assert_close(method.loss(x, y)["loss"], (ce_i * ce_i).mean())


def test_dat_with_the_real_attack(batch):
    x, y = batch
    model = Tiny()
    torch.manual_seed(5)
    out = build("dat", model, steps=3).loss(x, y)  # epoch 0 of 1: c_t = 0.5
    torch.manual_seed(5)
    x_adv = fosc_pgd(model, x, y, eps=0.031, alpha=0.031 / 4, steps=3, threshold=0.5)
    torch.testing.assert_close(out["loss"], ce(model(x_adv), y))


# ---------------------------------------------------------------- CAT
def test_strength_groups():
    assert strength_groups(8, 0) == [(0, 0, 8)]
    assert strength_groups(8, 2) == [(0, 0, 2), (1, 2, 5), (2, 5, 8)]
    assert strength_groups(2, 3) == [(1, 0, 1), (3, 1, 2)]  # empty groups are left out
    assert strength_groups(8, 2, mix=False) == [(2, 0, 8)]


def test_cat_mixed_batch_loss(batch, monkeypatch):
    x, y = batch
    model, fake = Tiny(), FakeAttack()
    monkeypatch.setattr(cat_mod, "pgd", fake)
    out = build("cat", model, steps=2, start_k=2).loss(x, y)
    assert fake.calls == [dict(n=3, eps=8 / 255, alpha=2 / 255, steps=1, loss="ce", start="uniform"),
                          dict(n=3, eps=8 / 255, alpha=2 / 255, steps=2, loss="ce", start="uniform")]
    x_mixed = torch.cat([x[:2], (x[2:5] + 0.01).clamp(0, 1), (x[5:] + 0.02).clamp(0, 1)])
    z = model(x_mixed).detach()
    torch.testing.assert_close(out["loss"], ce(z, y))
    assert out["lesson_acc"].item() == pytest.approx((z[5:].argmax(1) == y[5:]).float().mean().item())
    assert out["k"].item() == 2 and not out["lesson_acc"].requires_grad
    fake.calls.clear()
    out = build("cat", model, steps=2, start_k=2, mix=False).loss(x, y)
    assert [c["steps"] for c in fake.calls] == [2] and fake.calls[0]["n"] == 8
    torch.testing.assert_close(out["loss"], ce(model((x + 0.02).clamp(0, 1)).detach(), y))
    # lesson 0 (the paper's start) is natural training: no attack at all
    fake.calls.clear()
    out = build("cat", model).loss(x, y)
    assert fake.calls == [] and out["k"].item() == 0
    torch.testing.assert_close(out["loss"], ce(model(x).detach(), y))


def test_cat_rule_grows_k_after_patience_and_never_beyond_k():
    m = build("cat", Tiny(), steps=2, patience=2)
    assert m.k == 0
    ks = []
    for acc in (0.5, 0.6, 0.55, 0.6, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3):
        m.close_epoch(acc)
        ks.append(m.k)
    # lesson 0: 0.6 is the best, then 2 epochs without a strict increase (0.55, 0.6) end it;
    # lesson 1 starts afresh (0.1 is its first best) and ends after 0.3, 0.3; lesson 2 = K stays
    assert ks == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert m.k == 2 and build("cat", Tiny(), steps=3, start_k=3).k == 3
    with pytest.raises(DarhtError, match="start_k"):
        build("cat", Tiny(), steps=2, start_k=3)


def run_epochs(method, epochs, x, y, first=0):
    ks = []
    for e in range(first, epochs):
        method.start_epoch(e, epochs)
        ks.append(method.k)
        for _ in range(2):
            method.loss(x, y)
    return ks


def test_cat_curriculum_through_epochs_and_state_round_trip(batch, monkeypatch, tmp_path):
    x, y = batch
    monkeypatch.setattr(cat_mod, "pgd", lambda model, x, y, **kw: x.clone())  # every strength: one accuracy
    model = Tiny()
    straight = build("cat", model, steps=2, patience=1)
    ks = run_epochs(straight, 8, x, y)
    # a fixed model never improves: each lesson lasts patience + 1 = 2 epochs, then k stays at K
    assert ks == [0, 0, 1, 1, 2, 2, 2, 2]

    first = build("cat", model, steps=2, patience=1)
    run_epochs(first, 3, x, y)  # the epochs a crashed run finished; its checkpoint holds this state
    torch.save(first.state_dict(), tmp_path / "s.pt")
    resumed = build("cat", model, steps=2, patience=1)
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert resumed.state_dict() == first.state_dict()
    assert run_epochs(resumed, 8, x, y, first=3) == ks[3:]
    assert resumed.state_dict() == straight.state_dict()


# ---------------------------------------------------------------- end to end
DATA = ["--data", "synthetic", "--set", "data.kwargs={n: 48, num_classes: 4, shape: [1, 8, 8], seed: 2}",
        "--set", "data.augment=false", "--set", "eval.n=8", "--set", "eval.steps=1", "--batch-size", "16",
        "--no-progress", "--device", "cpu", "--model", "small-cnn", "--set", "model.kwargs={width: 4}"]


@pytest.mark.parametrize("method,args,key", [("cat", "{steps: 2, patience: 1}", "train_k"),
                                             ("dat", "{steps: 2}", "train_c_t")])
def test_train_cli_end_to_end(method, args, key, tmp_path):
    from darht.cli import main

    out = tmp_path / method
    assert main(["train", "--method", method, "--epochs", "2", "--out", str(out),
                 "--set", f"method_args={args}", *DATA]) == 0
    records = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all(key in r for r in records)
    if method == "dat":
        assert [r[key] for r in records] == pytest.approx([fosc_threshold(e, 2) for e in (0, 1)])
    else:
        assert all(0 <= r[key] <= 2 for r in records)
    assert (out / "best.safetensors").is_file()


def test_cat_resumes_identically(tmp_path, monkeypatch):
    from darht.config import make_config
    from darht.engine import checkpoint as ckpt
    from darht.engine.trainer import train

    def cfg(out):
        return make_config({
            "data": {"name": "synthetic", "kwargs": {"n": 48, "shape": [1, 8, 8], "num_classes": 4},
                     "val_fraction": 0.25, "augment": False},
            "model": {"name": "small-cnn", "kwargs": {"width": 4}}, "method": "cat",
            "method_args": {"steps": 2, "patience": 1, "eps": 0.1, "alpha": 0.05},
            "eval": {"attack": "pgd", "eps": 0.1, "steps": 1, "n": 8}, "optim": {"lr": 0.1, "schedule": "constant"},
            "epochs": 4, "batch_size": 12, "seed": 3, "device": "cpu", "out": str(out), "progress": False})

    train(cfg(tmp_path / "a"))
    real_save, calls = ckpt.save_checkpoint, []

    def crash_on_third(path, state):  # the process dies after training epoch 3, before last.pt
        calls.append(state["epoch"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_save(path, state)

    monkeypatch.setattr(ckpt, "save_checkpoint", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "b"))
    monkeypatch.undo()
    train(cfg(tmp_path / "b"), resume=True)
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in ("a", "b"))
    assert a["method"] == b["method"] and a["method"]["sums_epoch"] == 3
    lines = [[json.loads(s) for s in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in "ab"]
    assert [(r["train_k"], r["train_loss"]) for r in lines[0]] == [(r["train_k"], r["train_loss"]) for r in lines[1]]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
