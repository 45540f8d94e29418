"""Adversarial-training methods: each loss against its formula, the tau schedules, args, modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import darht.methods.fat as fat_mod
import darht.methods.pgd_at as pgd_at_mod
import darht.methods.trades as trades_mod
from darht.attacks.fat import fat_pgd
from darht.attacks.pgd import pgd
from darht.attacks.trades import trades_pgd
from darht.errors import DarhtError
from darht.methods.args import FAT_TAU, FAT_TRADES_TAU, StepSchedule, parse_step_schedule
from darht.methods.base import OriginalSchedule
from darht.registry import METHODS

AT_METHODS = ["standard", "pgd-at", "trades", "fat", "fat-trades"]
C = 4  # classes


class Tiny(nn.Module):
    """A small MLP on [B, 3, 2, 2] images that records the train/eval mode of every forward."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, C))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.net(x)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(8, 3, 2, 2, generator=g)
    y = torch.randint(0, C, (8,), generator=g)
    return x, y


def build(name: str, model: nn.Module, **args):
    return METHODS.get(name)(model, teachers=[], **args)


# Direct formulas, written out rather than through the library's helpers.
def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -F.log_softmax(logits, 1)[torch.arange(len(y)), y].mean()


def kl_mean(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    p, q = F.softmax(logits_p, 1), F.softmax(logits_q, 1)
    return (p * (p.log() - q.log())).sum(1).mean()


def acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


class FakeAttack:
    """Stands in for an attack: records its keyword arguments and returns a fixed x'."""

    def __init__(self, x_adv: torch.Tensor):
        self.x_adv, self.calls = x_adv, []

    def __call__(self, model, x, y, **kw):
        self.calls.append(kw)
        return self.x_adv.clone()


def fixed_adv(x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return (x + 0.031 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)


def check_parts(out: dict) -> None:
    assert out["loss"].requires_grad and out["loss"].ndim == 0
    for k, v in out.items():
        if k != "loss":
            assert isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad, k


# ---------------------------------------------------------------- losses equal their formulas
def test_standard_is_ce(batch):
    x, y = batch
    model = Tiny()
    out = build("standard", model).loss(x, y)
    check_parts(out)
    with torch.no_grad():
        z = model(x)
    torch.testing.assert_close(out["loss"], ce(z, y))
    assert out["acc"].item() == pytest.approx(acc(z, y))


def test_pgd_at_is_ce_on_pgd_examples(batch, monkeypatch):
    x, y = batch
    model, x_adv = Tiny(), fixed_adv(x)
    fake = FakeAttack(x_adv)
    monkeypatch.setattr(pgd_at_mod, "pgd", fake)
    out = build("pgd-at", model, eps=0.05, alpha=0.01, steps=3).loss(x, y)
    check_parts(out)
    assert fake.calls == [dict(eps=0.05, alpha=0.01, steps=3, loss="ce", start="uniform")]
    z = model(x_adv).detach()
    torch.testing.assert_close(out["loss"], ce(z, y))
    assert out["adv_acc"].item() == pytest.approx(acc(z, y))


def test_pgd_at_with_the_real_attack(batch):
    x, y = batch
    model = Tiny()
    torch.manual_seed(5)
    out = build("pgd-at", model, steps=2).loss(x, y)
    torch.manual_seed(5)
    x_adv = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=2, loss="ce", start="uniform")
    assert not torch.equal(x_adv, x)
    torch.testing.assert_close(out["loss"], ce(model(x_adv), y))


def test_trades_is_ce_plus_beta_kl(batch, monkeypatch):
    x, y = batch
    model, x_adv = Tiny(), fixed_adv(x)
    fake = FakeAttack(x_adv)
    monkeypatch.setattr(trades_mod, "trades_pgd", fake)
    out = build("trades", model).loss(x, y)
    check_parts(out)
    assert fake.calls == [dict(eps=0.031, alpha=0.007, steps=10)]
    z, z_adv = model(x).detach(), model(x_adv).detach()
    torch.testing.assert_close(out["ce"], ce(z, y))
    torch.testing.assert_close(out["kl"], kl_mean(z, z_adv))
    torch.testing.assert_close(out["loss"], ce(z, y) + 6.0 * kl_mean(z, z_adv))
    assert out["adv_acc"].item() == pytest.approx(acc(z_adv, y))
    assert out["kl"].item() > 0


def test_trades_with_the_real_attack(batch):
    x, y = batch
    model = Tiny()
    torch.manual_seed(6)
    out = build("trades", model, steps=2, beta=2.0).loss(x, y)
    torch.manual_seed(6)
    x_adv = trades_pgd(model, x, y, eps=0.031, alpha=0.007, steps=2)
    z = model(x)
    torch.testing.assert_close(out["loss"], ce(z, y) + 2.0 * kl_mean(z, model(x_adv)))


def _param_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.flatten() for g in grads])


def test_trades_gradient_flows_through_clean_and_adversarial_branch(batch, monkeypatch):
    x, y = batch
    model, x_adv = Tiny(), fixed_adv(x)
    monkeypatch.setattr(trades_mod, "trades_pgd", FakeAttack(x_adv))
    g_method = _param_grad(model, build("trades", model).loss(x, y)["loss"])

    z, z_adv = model(x), model(x_adv)
    g_both = _param_grad(model, ce(z, y) + 6 * kl_mean(z, z_adv))
    z, z_adv = model(x), model(x_adv)
    g_clean_detached = _param_grad(model, ce(z, y) + 6 * kl_mean(z.detach(), z_adv))
    z, z_adv = model(x), model(x_adv)
    g_adv_detached = _param_grad(model, ce(z, y) + 6 * kl_mean(z, z_adv.detach()))

    torch.testing.assert_close(g_method, g_both)
    assert (g_method - g_clean_detached).abs().max() > 1e-4
    assert (g_method - g_adv_detached).abs().max() > 1e-4


def test_trades_gradient_reaches_both_forward_calls(batch, monkeypatch):
    """Hook the two train-mode forwards: the adversarial logits get gradient, and the clean logits
    get more than CE's (softmax - onehot) / B, i.e. the KL's gradient too."""
    x, y = batch
    model, x_adv = Tiny(), fixed_adv(x)
    monkeypatch.setattr(trades_mod, "trades_pgd", FakeAttack(x_adv))
    outputs = []

    def keep(module, inputs, out):
        out.retain_grad()
        outputs.append(out)

    model.register_forward_hook(keep)
    build("trades", model).loss(x, y)["loss"].backward()
    z_nat, z_adv = outputs
    assert z_adv.grad is not None and z_adv.grad.abs().sum() > 0
    ce_grad = (F.softmax(z_nat.detach(), 1) - F.one_hot(y, C)) / len(y)
    assert (z_nat.grad - ce_grad).abs().max() > 1e-5
    # exactly the gradient of the direct formula w.r.t. the clean logits
    zn = z_nat.detach().requires_grad_(True)
    expected = torch.autograd.grad(ce(zn, y) + 6 * kl_mean(zn, z_adv.detach()), [zn])[0]
    torch.testing.assert_close(z_nat.grad, expected)


# ---------------------------------------------------------------- FAT: tau schedule reaches the attack
def fat_rule(e: int) -> int:  # FAT.py's adjust_tau, 1-based epoch
    return 0 if e <= 50 else 1 if e <= 90 else 2


def fat_trades_rule(e: int) -> int:  # FAT_for_TRADES.py's adjust_tau
    return 0 if e <= 30 else 1 if e <= 50 else 2 if e <= 70 else 3


def test_fat_loss_and_dynamic_tau_passed_to_attack(batch, monkeypatch):
    x, y = batch
    model, x_adv = Tiny(), fixed_adv(x)
    fake = FakeAttack(x_adv)
    monkeypatch.setattr(fat_mod, "fat_pgd", fake)
    method = build("fat", model)
    epochs = [0, 49, 50, 89, 90, 119]
    for e in epochs:
        method.start_epoch(e, 120)
        out = method.loss(x, y)
        assert out["tau"].item() == fat_rule(e + 1)
    check_parts(out)
    assert [c["tau"] for c in fake.calls] == [fat_rule(e + 1) for e in epochs]
    assert {k: v for k, v in fake.calls[0].items() if k != "tau"} == dict(
        eps=0.031, alpha=0.007, steps=10, omega=0.001, loss="ce", start="uniform")
    z = model(x_adv).detach()
    torch.testing.assert_close(out["loss"], ce(z, y))
    assert out["adv_acc"].item() == pytest.approx(acc(z, y))


def test_fat_schedule_scaled_to_short_run_and_fixed_tau(batch, monkeypatch):
    x, y = batch
    fake = FakeAttack(fixed_adv(x))
    monkeypatch.setattr(fat_mod, "fat_pgd", fake)
    method = build("fat", Tiny())
    for e in range(12):  # 120 -> 12 epochs: boundaries 50, 90 become 5, 9
        method.start_epoch(e, 12)
        method.loss(x, y)
    assert [c["tau"] for c in fake.calls] == [0] * 5 + [1] * 4 + [2] * 3

    fake.calls.clear()
    fixed = build("fat", Tiny(), tau=3)
    for e in (0, 6, 11):
        fixed.start_epoch(e, 12)
        assert fixed.loss(x, y)["tau"].item() == 3
    assert [c["tau"] for c in fake.calls] == [3, 3, 3]


def test_fat_trades_loss_and_tau(batch, monkeypatch):
    x, y = batch
    model, x_adv = Tiny(), fixed_adv(x)
    fake = FakeAttack(x_adv)
    monkeypatch.setattr(fat_mod, "fat_pgd", fake)
    method = build("fat-trades", model)
    epochs = [0, 29, 30, 49, 50, 69, 70, 84]
    for e in epochs:
        method.start_epoch(e, 85)
        out = method.loss(x, y)
    check_parts(out)
    assert [c["tau"] for c in fake.calls] == [fat_trades_rule(e + 1) for e in epochs]
    assert {k: v for k, v in fake.calls[0].items() if k != "tau"} == dict(
        eps=0.031, alpha=0.007, steps=10, omega=0.0, loss="kl", start="normal", sigma=0.001)
    z, z_adv = model(x).detach(), model(x_adv).detach()
    torch.testing.assert_close(out["loss"], ce(z, y) + 6.0 * kl_mean(z, z_adv))
    assert out["tau"].item() == 3


def test_fat_real_attack_tau_zero_keeps_misclassified_starts_and_tau_k_steps(batch, monkeypatch):
    """Every example starts misclassified (bias to class 0, labels 1). With alpha = 2 eps one
    sign-step puts every pixel on the eps boundary; a uniform start almost never is there."""
    x, _ = batch
    y = torch.ones(len(x), dtype=torch.long)
    model = Tiny()
    with torch.no_grad():
        model.net[3].bias.copy_(torch.tensor([100.0, 0.0, 0.0, 0.0]))
    seen = []

    def spy(*a, **kw):
        seen.append(fat_pgd(*a, **kw))
        return seen[-1]

    monkeypatch.setattr(fat_mod, "fat_pgd", spy)
    eps = 0.05
    for tau in (0, 3):
        build("fat", model, tau=tau, eps=eps, alpha=2 * eps, steps=3).loss(x, y)
    dist0, dist_k = (seen[0] - x).abs(), (seen[1] - x).abs()
    assert dist0.max() <= eps + 1e-6 and (dist0 < eps - 1e-4).float().mean() > 0.9
    torch.testing.assert_close(dist_k, torch.full_like(x, eps))


def test_fat_with_tau_k_equals_pgd_at(batch):
    x, y = batch
    model = Tiny()
    torch.manual_seed(7)
    fat_out = build("fat", model, tau=2, steps=2, omega=0.0, eps=8 / 255, alpha=2 / 255).loss(x, y)
    torch.manual_seed(7)
    pgd_out = build("pgd-at", model, steps=2).loss(x, y)
    torch.testing.assert_close(fat_out["loss"], pgd_out["loss"])


# ---------------------------------------------------------------- schedules
def test_step_schedule_matches_original_runs_exactly():
    fat, fat_trades = StepSchedule(FAT_TAU), StepSchedule(FAT_TRADES_TAU)
    assert [fat(e, 120) for e in range(120)] == [fat_rule(e + 1) for e in range(120)]
    assert [fat_trades(e, 85) for e in range(85)] == [fat_trades_rule(e + 1) for e in range(85)]
    assert fat(150, 120) == 2  # past the end the last value holds


def test_step_schedule_scaling_fractions_and_absolute():
    fat = StepSchedule(FAT_TAU)
    # 10 epochs: tau 0 while e <= 50*10/120 = 4.17, 1 while e <= 7.5, then 2 (e 1-based)
    assert [fat(e, 10) for e in range(10)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [fat(e, 240) for e in (99, 100, 179, 180)] == [0, 1, 1, 2]
    # fractions of the run behave like the original's epochs (only ratios to the last boundary matter)
    frac = StepSchedule(((0.7, 0), (1.0, 1)))
    assert [frac(e, 10) for e in range(10)] == [0] * 7 + [1] * 3  # 0.7 * 10 is exactly 7
    absolute = StepSchedule(FAT_TAU, scale=False)
    assert [absolute(e, 10) for e in range(10)] == [0] * 10
    assert [absolute(e, 200) for e in (49, 50, 89, 90, 199)] == [0, 1, 1, 2, 2]


def test_parse_step_schedule():
    assert parse_step_schedule("tau_schedule", "dynamic", FAT_TAU).points == FAT_TAU
    s = parse_step_schedule("tau_schedule", [[2, 0], [4, 5]], FAT_TAU, scale=False)
    assert [s(e, 10) for e in range(5)] == [0, 0, 5, 5, 5]
    for bad in ("static", [], [[2, 0], [1, 1]], [[2, -1]], [[2, 0.5]], [[0, 1]], [3, 1]):
        with pytest.raises(DarhtError, match="tau_schedule"):
            parse_step_schedule("tau_schedule", bad, FAT_TAU)


def test_custom_tau_schedule_through_method(batch, monkeypatch):
    x, y = batch
    fake = FakeAttack(fixed_adv(x))
    monkeypatch.setattr(fat_mod, "fat_pgd", fake)
    m = build("fat", Tiny(), tau_schedule=[[1, 0], [2, 4]], scale_schedule=False)
    for e in range(3):
        m.start_epoch(e, 3)
        m.loss(x, y)
    assert [c["tau"] for c in fake.calls] == [0, 4, 4]


def test_original_lr_schedules():
    def fat_lr(e):  # FAT.py's adjust_learning_rate with its 1-based epoch
        return 0.005 if e >= 110 else 0.01 if e >= 90 else 0.1 if e >= 60 else 1.0

    fat = METHODS.get("fat").original_schedule
    assert [fat.lr_factor(e, 120) for e in range(120)] == [fat_lr(e + 1) for e in range(120)]
    trades = METHODS.get("trades").original_schedule
    assert trades.epochs == 76
    assert [trades.lr_factor(e, 76) for e in range(76)] == [0.1 if e + 1 >= 75 else 1.0 for e in range(76)]
    # 12 epochs: milestones 59, 89, 109 of 120 become 5.9, 8.9, 10.9
    assert [fat.lr_factor(e, 12) for e in range(12)] == [1.0] * 6 + [0.1] * 3 + [0.01] * 2 + [0.005]
    for name in AT_METHODS:
        s = METHODS.get(name).original_schedule
        assert len(s.milestones) == len(s.lr_factors) and max(s.milestones) < s.epochs
        assert s.lr > 0 and 0 <= s.momentum < 1 and s.weight_decay >= 0 and s.batch_size >= 1 and s.source
    with pytest.raises(ValueError):  # a factor without its milestone cannot be declared
        OriginalSchedule(epochs=10, lr=0.1, momentum=0.9, weight_decay=0, batch_size=8, milestones=(5,),
                         lr_factors=(), source="x")


# ---------------------------------------------------------------- modes and arguments
@pytest.mark.parametrize("name", AT_METHODS)
def test_train_mode_restored_and_attack_in_eval(name, batch):
    x, y = batch
    model = Tiny()
    model.train()
    model.net[1].eval()  # a deliberately frozen part must stay frozen
    method = build(name, model, **({} if name == "standard" else {"steps": 1}))
    method.loss(x, y)
    assert model.training and model.net[0].training and not model.net[1].training
    n_train = 1 if name in ("standard", "pgd-at", "fat") else 2
    assert model.modes[-n_train:] == [True] * n_train  # the loss's forwards run in train mode
    if name != "standard":
        assert False in model.modes[:-n_train]  # the attack's forwards ran in eval mode
    model.eval()
    method.loss(x, y)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("name,args,match", [
    ("pgd-at", {"eps": -0.1}, "eps must be in \\[0, 1\\]"),
    ("pgd-at", {"steps": -1}, "steps must be >= 0"),
    ("pgd-at", {"steps": 2.5}, "steps must be an integer"),
    ("trades", {"beta": -1}, "beta must be >= 0"),
    ("trades", {"eps": "abc"}, "eps must be a number"),
    ("trades", {"beta": True}, "beta must be a number"),
    ("fat", {"tau": -1}, "tau must be >= 0"),
    ("fat", {"omega": -0.1}, "omega must be >= 0"),
    ("fat", {"alpha": float("nan")}, "alpha must be a finite number"),
    ("fat", {"tau_schedule": "fixed"}, "tau_schedule must be 'dynamic'"),
    ("fat", {"tau": 1, "tau_schedule": [[1, 0]]}, "either a fixed tau or a tau_schedule"),
    ("fat", {"scale_schedule": "maybe"}, "scale_schedule must be true or false"),
    ("fat-trades", {"beta": -6}, "beta must be >= 0"),
])
def test_bad_values_raise(name, args, match):
    with pytest.raises(DarhtError, match=match) as e:
        build(name, Tiny(), **args)
    assert f"'{name}'" in str(e.value)


@pytest.mark.parametrize("name", AT_METHODS)
def test_unknown_args_name_the_accepted_ones(name):
    with pytest.raises(DarhtError) as e:
        build(name, Tiny(), betta=6)
    msg = str(e.value)
    assert f"'{name}'" in msg and "betta" in msg and "accepted" in msg
    expected = {"standard": [], "pgd-at": ["eps", "alpha", "steps"], "trades": ["beta"],
                "fat": ["omega", "tau", "tau_schedule", "scale_schedule"], "fat-trades": ["beta", "tau"]}[name]
    assert all(a in msg for a in expected)


@pytest.mark.parametrize("name", AT_METHODS)
def test_teachers_refused(name):
    with pytest.raises(DarhtError, match="without teachers"):
        METHODS.get(name)(Tiny(), teachers=[Tiny()])


def test_numbers_from_yaml_strings():
    m = build("pgd-at", Tiny(), eps="8/255", alpha="0.5/255", steps="3")
    assert m.args.eps == pytest.approx(8 / 255) and m.args.alpha == pytest.approx(0.5 / 255) and m.args.steps == 3
    assert isinstance(m.args.steps, int)
    assert build("fat", Tiny(), scale_schedule="false").schedule.scale is False
