"""Attacks: contract of every registered attack, the math of the in-house ones, the pyautoattack adapters."""

from __future__ import annotations

import inspect
import random
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks import PAPER_DEFAULTS, EOTWrapper, run_autoattack
from darht.attacks.core import (ce_loss, cw_loss, eval_mode, frozen_params, input_grad, kl_loss,
                                preserved_rng, project_linf)
from darht.attacks.fat import fat_pgd
from darht.attacks.pgd import cw_inf, pgd
from darht.attacks.trades import trades_pgd
from darht.errors import DarhtError
from darht.registry import ATTACKS

# few iterations/queries so each pyautoattack call stays well under a second on a tiny model
FAST = {
    "apgd-ce": dict(n_iter=5), "apgd-dlr": dict(n_iter=5), "apgd-t": dict(n_iter=5, n_target_classes=2),
    "fab-t": dict(n_iter=5, n_target_classes=2), "square": dict(n_queries=30),
    "autoattack": dict(n_iter=5, n_queries=30, n_target_classes=2),
    "autoattack-rand": dict(n_iter=5, eot_iter=2), "cw-inf": dict(steps=10),
}
NOT_LABEL_ATTACKS = {"trades-pgd"}  # ascends KL to the clean prediction, not the labels' loss


class Recorder(nn.Module):
    """Identity that records the mode it ran in, to check attacks run the model in eval mode."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def blobs(n: int, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs in 1x8x8 image space, clipped to [0, 1]; fixed class means, seeded samples."""
    means = torch.rand(classes, 1, 8, 8, generator=torch.Generator().manual_seed(123)) * 0.6 + 0.2
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = (means[y] + 0.15 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad(), eval_mode(model):
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only spins on a shared, loaded CPU (3x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    """A tiny MLP (with BatchNorm and dropout, so modes matter) trained for 100 SGD steps on blobs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Dropout(0.1), nn.Linear(32, 4), Recorder())
    x, y = blobs(512, seed=1)
    params = list(model.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    for step in range(100):  # SGD with momentum 0.9, written out (torch.optim's import is slow)
        i = torch.arange(step * 64, step * 64 + 64) % 512
        grads = torch.autograd.grad(F.cross_entropy(model(x[i]), y[i]), params)
        with torch.no_grad():
            for p, v, g in zip(params, velocity, grads):
                v.mul_(0.9).add_(g)
                p.sub_(0.05 * v)
    xt, yt = blobs(64, seed=2)
    return model, xt, yt


# ---------------------------------------------------------------- contract of every attack
@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_contract(name, train_mode, trained):
    model, x, y = trained
    x, y = x[:12], y[:12]
    eps = 0.1
    model.train(train_mode)
    model[4].train(not train_mode)  # a submodule in the other mode: must be restored exactly
    modes = [m.training for m in model.modules()]
    known = torch.full_like(model[1].weight, 7.0)
    model[1].weight.grad = known.clone()  # an existing .grad must stay as it is
    model[-1].seen.clear()
    torch.manual_seed(0)
    x_adv = ATTACKS.get(name)(model, x, y, eps=eps, **FAST.get(name, {}))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert [m.training for m in model.modules()] == modes
    assert model[-1].seen and not any(model[-1].seen), "the model must run in eval mode"
    assert torch.equal(model[1].weight.grad, known)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "1.weight")
    assert all(p.requires_grad for p in model.parameters())
    if name not in NOT_LABEL_ATTACKS:
        assert accuracy(model, x_adv, y) <= accuracy(model, x, y)
    model[1].weight.grad = None


def test_registry_names_and_paper_defaults():
    expected = {"fgsm", "pgd", "cw-inf", "fat-pgd", "trades-pgd", "apgd-ce", "apgd-dlr", "apgd-t",
                "fab-t", "square", "autoattack", "autoattack-rand"}
    assert expected <= set(ATTACKS.names())
    assert set(PAPER_DEFAULTS) <= set(ATTACKS.names())
    for name, kw in PAPER_DEFAULTS.items():  # every default is a keyword the attack accepts
        inspect.signature(ATTACKS.get(name)).bind(None, None, None, eps=8 / 255, **kw)
    assert PAPER_DEFAULTS["pgd"] == {"steps": 10, "alpha": 2 / 255, "loss": "ce", "start": "normal",
                                     "sigma": 0.001}
    assert PAPER_DEFAULTS["square"]["n_queries"] == 5000


# ---------------------------------------------------------------- core math
def test_project_linf():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 4, 4)
    x_adv = x + torch.randn_like(x)
    eps = 0.1
    out = project_linf(x_adv, x, eps)
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    expected = torch.where(x_adv < lo, lo, torch.where(x_adv > hi, hi, x_adv))
    assert torch.allclose(out, expected)
    # hand-checked cases: ball first, then the image box
    x1 = torch.tensor([0.95, 0.95, 0.02, 0.5])
    got = project_linf(torch.tensor([1.2, 0.5, -0.3, 0.52]), x1, 0.1)
    assert torch.allclose(got, torch.tensor([1.0, 0.85, 0.0, 0.52]))


def test_losses_match_direct_formulas():
    torch.manual_seed(0)
    z = torch.randn(6, 5) * 3
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    ce = torch.stack([-(z[i, y[i]].exp() / z[i].exp().sum()).log() for i in range(6)])
    assert torch.allclose(ce_loss(z, y), ce.sum(), atol=1e-5)
    assert torch.allclose(ce_loss(z, y, reduction="none"), ce, atol=1e-5)
    for kappa in (0.0, 2.0, 50.0):
        cw = []
        for i in range(6):
            other = max(z[i, j].item() for j in range(5) if j != y[i])
            cw.append(-max(z[i, y[i]].item() - other + kappa, 0.0))
        assert torch.allclose(cw_loss(z, y, kappa, reduction="none"), torch.tensor(cw), atol=1e-5)
        assert torch.allclose(cw_loss(z, y, kappa), torch.tensor(cw).sum(), atol=1e-4)
    p = torch.softmax(torch.randn(6, 5), 1)
    q = torch.softmax(z, 1)
    assert torch.allclose(kl_loss(z, p), (p * (p.log() - q.log())).sum(), atol=1e-5)
    # a zero target probability contributes 0 (0 log 0 = 0), not nan
    p0 = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0]])
    direct = sum(p0[0, c] * (p0[0, c].log() - q[0, c].log()) for c in (1, 2))
    assert torch.allclose(kl_loss(z[:1], p0), direct, atol=1e-5)


def test_eval_mode_restores_each_submodule():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Sequential(nn.BatchNorm1d(2), nn.Dropout()))
    model.train()
    model[2][1].eval()
    before = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("restored even on error")
    assert [m.training for m in model.modules()] == before


def test_input_grad_linear_ce_is_analytic_and_leaves_weights_alone():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    g = input_grad(lin, x, lambda z: ce_loss(z, y))
    # d CE / dx = W^T (softmax(z) - onehot(y)) per example
    with torch.no_grad():
        expected = (torch.softmax(lin(x), 1) - F.one_hot(y, 3).float()) @ lin.weight
    assert torch.allclose(g, expected, atol=1e-6)
    assert lin.weight.grad is None and lin.bias.grad is None and not x.requires_grad


class RandomMask(nn.Module):
    """A randomized model: a fresh Bernoulli input mask each pass, then a linear layer."""
    randomized = True

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x * (torch.rand_like(x) > 0.5).float())


def test_eot_averages_gradients_and_logits():
    model = RandomMask()
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    loss = lambda z: ce_loss(z, y)  # noqa: E731
    torch.manual_seed(3)
    g3 = input_grad(model, x, loss, eot=3)
    torch.manual_seed(3)
    singles = [input_grad(model, x, loss) for _ in range(3)]
    assert torch.allclose(g3, sum(singles) / 3, atol=1e-6)
    assert not torch.allclose(singles[0], singles[1])  # the passes really differ
    torch.manual_seed(4)
    mean_logits = EOTWrapper(model, samples=4)(x)
    torch.manual_seed(4)
    assert torch.allclose(mean_logits, torch.stack([model(x) for _ in range(4)]).mean(0), atol=1e-6)


def test_frozen_params_and_preserved_rng_restore_state():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].bias.requires_grad_(False)
    with frozen_params(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    with preserved_rng():
        torch.manual_seed(99), np.random.seed(99), random.seed(99)
        torch.rand(3)
    after = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    assert torch.equal(after[0], torch.rand(3))
    assert np.array_equal(after[1], np.random.rand(3)) and after[2] == random.random()


# ---------------------------------------------------------------- in-house attacks
def test_pgd_reaches_linear_worst_case():
    """z = Wx + b, 2 classes: the CE-maximising point in the ball is x - eps * sign(w_y - w_other)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    x = torch.rand(10, 1, 8, 8) * 0.4 + 0.3  # in [0.3, 0.7]: the [0, 1] box never binds at eps 0.05
    y = torch.arange(10) % 2
    w = model[1].weight.detach()  # [2, 64]
    direction = (w[y] - w[1 - y]).sign().view(10, 1, 8, 8)
    expected = x - 0.05 * direction
    for start in ("normal", "uniform", "none"):
        x_adv = pgd(model, x, y, eps=0.05, alpha=0.01, steps=12, start=start)
        assert torch.allclose(x_adv, expected, atol=1e-6), start
    # the CW margin has the same direction on a 2-class linear model (kappa large keeps it active)
    assert torch.allclose(cw_inf(model, x, y, eps=0.05, steps=12), expected, atol=1e-6)


def test_fgsm_is_one_signed_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = torch.rand(6, 1, 8, 8) * 0.4 + 0.3, torch.tensor([0, 1, 2, 0, 1, 2])
    g = input_grad(model, x, lambda z: ce_loss(z, y))
    x_adv = ATTACKS.get("fgsm")(model, x, y, eps=0.03)
    assert torch.allclose(x_adv, x + 0.03 * g.sign(), atol=1e-7)


def test_pgd_start_and_last_iterate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(pgd(model, x, y, steps=0, start="none"), x)
    torch.manual_seed(1)
    got = pgd(model, x, y, eps=0.1, steps=0, start="normal", sigma=0.01)
    torch.manual_seed(1)
    assert torch.allclose(got, project_linf(x + 0.01 * torch.randn_like(x), x, 0.1))
    torch.manual_seed(1)
    got = pgd(model, x, y, eps=0.1, alpha=0.02, steps=3, start="uniform")
    torch.manual_seed(1)  # hand-rolled loop: uniform start, three sign steps, projection each step
    ref = project_linf(x + torch.empty_like(x).uniform_(-0.1, 0.1), x, 0.1)
    for _ in range(3):
        ref = project_linf(ref + 0.02 * input_grad(model, ref, lambda z: ce_loss(z, y)).sign(), x, 0.1)
    assert torch.allclose(got, ref)


def test_fat_tau0_keeps_misclassified_examples(trained):
    model, x, y = trained
    y_bad = torch.where(torch.arange(len(y)) % 2 == 0, (y + 1) % 4, y)  # half the labels made wrong
    with torch.no_grad(), eval_mode(model):
        wrong = model(x).argmax(1) != y_bad
    assert wrong.any() and (~wrong).any()
    x_adv = fat_pgd(model, x, y_bad, eps=0.1, tau=0, start="none", steps=5)
    assert torch.equal(x_adv[wrong], x[wrong])
    assert ((x_adv[~wrong] - x[~wrong]).abs().amax((1, 2, 3)) > 0).all()


@pytest.mark.parametrize("loss,start", [("ce", "uniform"), ("kl", "normal")])
def test_fat_large_tau_equals_pgd(trained, loss, start):
    model, x, y = trained
    for tau in (5, 50):
        torch.manual_seed(7)
        a = fat_pgd(model, x, y, eps=0.2, alpha=0.05, steps=5, tau=tau, omega=0.0, loss=loss, start=start)
        torch.manual_seed(7)
        b = pgd(model, x, y, eps=0.2, alpha=0.05, steps=5, loss=loss, start=start)
        assert torch.equal(a, b)
    assert accuracy(model, b, y) < accuracy(model, x, y)  # the comparison is not vacuous


def test_fat_tau_budget_matches_reference_loop(trained):
    """tau = 1: each example stops at the 2nd iterate that fools the model (checked before a step)."""
    model, x, y = trained
    eps, alpha, steps, tau = 0.3, 0.05, 6, 1
    got = fat_pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, tau=tau, omega=0.0, start="none")
    ref = x.clone()
    budget = [tau] * len(y)
    done = [False] * len(y)
    with eval_mode(model):
        for _ in range(steps):
            with torch.no_grad():
                pred = model(ref).argmax(1)
            g = input_grad(model, ref, lambda z: ce_loss(z, y))
            for i in range(len(y)):
                if done[i]:
                    continue
                if pred[i] != y[i]:
                    if budget[i] == 0:
                        done[i] = True
                        continue
                    budget[i] -= 1
                ref[i] = project_linf(ref[i] + alpha * g[i].sign(), x[i], eps)
    assert any(done) and not all(done)
    assert torch.allclose(got, ref, atol=1e-6)


def test_fat_noise_omega_is_added():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = torch.rand(4, 1, 8, 8) * 0.4 + 0.3, torch.tensor([0, 1, 2, 0])
    torch.manual_seed(0)
    a = fat_pgd(model, x, y, eps=0.2, alpha=0.01, steps=1, tau=5, omega=0.0, start="none")
    torch.manual_seed(0)
    b = fat_pgd(model, x, y, eps=0.2, alpha=0.01, steps=1, tau=5, omega=0.003, start="none")
    torch.manual_seed(0)
    assert torch.allclose(b, a + 0.003 * torch.randn_like(x), atol=1e-6)


def test_trades_pgd_increases_kl_and_is_kl_pgd(trained):
    model, x, _ = trained
    eps = 0.1
    with torch.no_grad(), eval_mode(model):
        p = torch.softmax(model(x), 1)
    torch.manual_seed(0)
    x_adv = trades_pgd(model, x, eps=eps, alpha=0.02, steps=10)
    torch.manual_seed(0)
    x_rand = project_linf(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    with torch.no_grad(), eval_mode(model):
        kl_adv = kl_loss(model(x_adv), p, reduction="none")
        kl_rand = kl_loss(model(x_rand), p, reduction="none")
    assert kl_adv.sum() > 5 * kl_rand.sum()
    torch.manual_seed(0)
    assert torch.equal(x_adv, pgd(model, x, None, eps=eps, alpha=0.02, steps=10, loss="kl"))


def test_bad_inputs_raise_darht_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    with pytest.raises(DarhtError, match="loss"):
        pgd(model, x, y, loss="hinge")
    with pytest.raises(DarhtError, match="start"):
        pgd(model, x, y, start="zeros")
    with pytest.raises(DarhtError, match=r"\[0, 1\]"):
        pgd(model, x * 255, y)
    with pytest.raises(DarhtError, match="labels"):
        pgd(model, x, y[:2])
    with pytest.raises(DarhtError, match="3 classes"):
        ATTACKS.get("apgd-dlr")(model, x, y)
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    for name in ("apgd-t", "autoattack"):
        with pytest.raises(DarhtError, match="4 classes"):
            ATTACKS.get(name)(three, x, y)
    with pytest.raises(DarhtError, match="unknown AutoAttack setting"):
        ATTACKS.get("apgd-ce")(model, x, y, n_steps=3)


# ---------------------------------------------------------------- pyautoattack adapters
def test_autoattack_restores_rng_and_trace(trained):
    model, x, y = trained

    def tracer(frame, event, arg):  # returns None: only call events, so it stays cheap
        return None

    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    sys.settrace(tracer)
    try:
        run_autoattack(model, x[:8], y[:8], eps=0.1, version="custom", attacks_to_run=["apgd-ce"],
                       seed=3, n_iter=3)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    after = (torch.rand(4), np.random.rand(2), random.random())
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    assert torch.equal(after[0], torch.rand(4))
    assert np.array_equal(after[1], np.random.rand(2)) and after[2] == random.random()


def test_run_autoattack_robust_mask(trained):
    model, x, y = trained
    x_adv, robust = run_autoattack(model, x, y, eps=0.3, version="custom",
                                   attacks_to_run=["apgd-ce", "square"], n_iter=10, n_queries=30)
    with torch.no_grad(), eval_mode(model):
        correct = model(x_adv).argmax(1) == y
        clean = model(x).argmax(1) == y
    assert robust.dtype == torch.bool and torch.equal(robust, correct)
    assert torch.equal(x_adv[robust], x[robust])  # untouched where no attack succeeded
    assert not (robust & ~clean).any() and robust.sum() < clean.sum()
    # the same seed gives the same result
    x_adv2, robust2 = run_autoattack(model, x, y, eps=0.3, version="custom",
                                     attacks_to_run=["apgd-ce", "square"], n_iter=10, n_queries=30)
    assert torch.equal(x_adv, x_adv2) and torch.equal(robust, robust2)


def test_apgd_at_least_as_strong_as_pgd_on_trained_model(trained):
    model, x, y = trained
    eps = 0.15  # large enough to hurt (robust ~0.2-0.3 of clean 1.0), small enough not to hit 0
    clean = accuracy(model, x, y)
    torch.manual_seed(0)
    acc_pgd = accuracy(model, pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10), y)
    acc_apgd = accuracy(model, ATTACKS.get("apgd-ce")(model, x, y, eps=eps, n_iter=20), y)
    assert clean >= 0.9
    assert acc_pgd <= clean - 0.3 and acc_apgd <= clean - 0.3
    assert acc_apgd <= acc_pgd + 0.05, (clean, acc_pgd, acc_apgd)
    assert acc_pgd > 0  # otherwise the comparison above says nothing


def test_attack_subset_keeps_version_settings():
    """attacks_to_run with version "rand" keeps rand's EOT (20 passes per gradient)."""
    torch.manual_seed(0)
    rec = Recorder()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), rec)
    x, y = blobs(8, seed=3)
    counts = {}
    for version in ("custom", "rand"):
        rec.seen.clear()
        run_autoattack(model, x, y, eps=0.05, version=version, attacks_to_run=["apgd-ce"], n_iter=2)
        counts[version] = len(rec.seen)
    # gradient passes (start + n_iter = 3) scale with eot_iter 1 -> 20; the rand version also
    # skips AutoAttack's 5-pass "is it randomized?" check
    assert counts["rand"] - (counts["custom"] - 5) == 19 * 3


@pytest.mark.parametrize("attack", ["pgd", "fgsm", "cw-inf", "fat-pgd", "trades-pgd", "apgd-ce"])
def test_attacks_run_in_fp32_inside_an_autocast_region(attack):
    """An AMP training step wraps the method's loss (and so its inner attack) in autocast: the
    attack must still see fp32 logits and gradients, i.e. return what it returns outside."""
    from darht.models import create_model
    from darht.registry import ATTACKS

    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_chans=1, img_size=12, width=4).eval()
    x, y = torch.rand(6, 1, 12, 12), torch.randint(0, 4, (6,))
    kw = {"n_iter": 3} if attack == "apgd-ce" else {"steps": 3} if attack != "fgsm" else {}
    fn = ATTACKS.get(attack)
    torch.manual_seed(1)
    ref = fn(model, x, y, eps=0.03, **kw)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = fn(model, x, y, eps=0.03, **kw)
    assert amp.dtype == torch.float32 and torch.equal(amp, ref)


@pytest.mark.parametrize("tau", [0, 1, 10])
def test_fat_pgd_compact_and_masked_paths_agree(trained, tau):
    """Dropping stopped examples from the working set (CPU) and masking them (GPU) give the same points."""
    model, x, y = trained
    x, y = x[:16], y[:16]
    out = []
    for compact in (True, False):
        torch.manual_seed(3)
        out.append(fat_pgd(model, x, y, eps=0.1, alpha=0.03, steps=5, tau=tau, omega=0.001, compact=compact))
    assert torch.equal(out[0], out[1])
