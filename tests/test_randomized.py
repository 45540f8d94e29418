"""The verdict rule for randomized models, checked on a model whose robustness is known exactly.

`DropoutLinear` is a linear classifier with inverted dropout on its 16 input pixels, drawn anew on
every forward pass. Its expected accuracy at any input is computed exactly by enumerating all
2^16 dropout masks. For the binary version the worst point of the L-inf ball is known in closed
form: every mask's margin is a non-negative combination of the same signed pixels, so the
corner x - eps * sign(w) (label 1; + for label 0) minimises all of them at once.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from darht.attacks.core import logits_and_input_grad
from darht.evaluation import robustness
from darht.evaluation.robustness import evaluate
from darht.evaluation.spec import DEFAULT_ATTACKS, EvalSpec
from darht.evaluation.verdict import is_randomized, score
from darht.models import create_model
from darht.registry import ATTACKS

D, P = 16, 0.5
MASKS = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)))  # [65536, 16]
EPS = 0.1


class DropoutLinear(torch.nn.Module):
    randomized = True

    def __init__(self, k: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(k, D, generator=g))
        self.b = torch.nn.Parameter(torch.zeros(k))

    def forward(self, x):
        h = x.flatten(1)
        m = torch.empty_like(h).bernoulli_(1 - P) / (1 - P)
        return (h * m) @ self.w.T + self.b

    @torch.no_grad()
    def expected_accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact P(correct) per example: every mask has probability 2^-16 at p = 0.5. [N]"""
        out = []
        for xi, yi in zip(x.flatten(1), y):
            logits = (MASKS * xi / (1 - P)) @ self.w.T + self.b   # [65536, K]
            out.append((logits.argmax(1) == yi).float().mean())
        return torch.stack(out)


def _data(model: DropoutLinear, n: int = 40, seed: int = 1):
    """Inputs inside [0.2, 0.8] (the ball stays inside the image box), labels = the noise-free
    prediction, kept where that prediction is fairly stable."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(4 * n, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = (x.flatten(1) @ model.w.T + model.b).argmax(1)
    keep = (model.expected_accuracy(x, y) > 0.6).nonzero().flatten()[:n]
    return x[keep], y[keep]


def _optimal_point(model: DropoutLinear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary model: the corner that lowers every mask's margin for the true class."""
    direction = torch.sign(model.w[1] - model.w[0]).view(1, 1, 4, 4)
    sign = torch.where(y == 1, -1.0, 1.0).view(-1, 1, 1, 1)
    return (x + EPS * sign * direction).clamp(0, 1)


def _spec(attacks, **kw):
    base = dict(attacks=attacks, eps=EPS, n=None, batch_size=64, progress=False, faces=False,
                attack_args={"apgd-ce": {"n_iter": 20}, "apgd-dlr": {"n_iter": 20}, "square": {"n_queries": 200},
                             "pgd": {"steps": 10, "alpha": EPS / 4}, "fab-t": {"n_iter": 20}})
    base.update(kw)
    return EvalSpec(**base)


@pytest.fixture(scope="module")
def binary():
    torch.manual_seed(0)
    model = DropoutLinear(2).eval()
    x, y = _data(model)
    return model, x, y


def test_score_is_the_expected_accuracy(binary):
    model, x, y = binary
    torch.manual_seed(0)
    frac, strict = score(model, x, y, draws=400)
    exact = model.expected_accuracy(x, y)
    assert (frac - exact).abs().max() < 0.12           # 400 draws: sd <= 0.025 per example
    assert abs(frac.mean().item() - exact.mean().item()) < 0.01
    assert bool((strict <= (frac == 1)).all())


def test_is_randomized_by_declaration_or_by_behaviour(binary):
    model, x, _ = binary

    class Undeclared(torch.nn.Module):  # a user's own stochastic model, with no flag
        def forward(self, x):
            return model(x)

    assert is_randomized(model) and is_randomized(Undeclared(), x[:4])
    assert not is_randomized(Undeclared()) and not is_randomized(torch.nn.Flatten(), x[:4])


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "cw-inf", "apgd-ce", "square", "fab-t"])
def test_every_attack_is_judged_by_the_rule_and_never_above_the_truth(binary, attack, monkeypatch):
    """Reported robustness = exact expected accuracy at the points the attack handed back (the
    same rule for in-house and pyautoattack attacks), and the strong attacks reach the known
    optimum: no number above the model's true robust accuracy."""
    model, x, y = binary
    judged = []
    real = robustness.judge

    def recording(model_, out, yb, draws, batch_size):
        frac, strict, points = real(model_, out, yb, draws, batch_size)
        judged.append((points, yb))
        return frac, strict, points

    monkeypatch.setattr(robustness, "judge", recording)
    torch.manual_seed(0)
    rec = evaluate(model, x, y, _spec([attack], draws=100), torch.device("cpu"))
    assert rec["randomized"] and rec["eot"] == 20 and rec["draws"] == 100
    points = torch.cat([p for p, _ in judged])
    labels = torch.cat([t for _, t in judged])
    attacked = torch.tensor(rec["examples"]["clean"]) > 0
    assert torch.equal(labels, y[attacked])
    at_points = torch.zeros(len(y))
    at_points[attacked] = model.expected_accuracy(points, labels)
    reported = torch.tensor(rec["examples"]["robust"][attack])
    assert abs(reported.mean().item() - at_points.mean().item()) < 0.03   # 100 draws, 40 examples
    optimum = model.expected_accuracy(_optimal_point(model, x, y), y).mean().item()
    clean = model.expected_accuracy(x, y).mean().item()
    assert reported.mean().item() >= optimum - 0.03   # nothing beats the optimum: the scoring is sound
    if attack in ("pgd", "cw-inf", "apgd-ce", "fgsm"):  # gradient attacks with EOT reach the optimum
        assert reported.mean().item() <= optimum + 0.05, (attack, reported.mean().item(), optimum, clean)
    else:  # black-box / minimum-norm: weaker here, but never the clean point (which scores `clean`)
        assert reported.mean().item() <= clean - 0.03, (attack, reported.mean().item(), optimum, clean)


def test_eot_20_is_at_least_as_strong_as_eot_1(binary):
    """FGSM with one draw: a dropped pixel has zero gradient and does not move (sign(0) = 0)."""
    model, x, y = binary
    torch.manual_seed(0)
    one = evaluate(model, x, y, _spec(["fgsm"], eot=1, draws=100), torch.device("cpu"))
    torch.manual_seed(0)
    twenty = evaluate(model, x, y, _spec(["fgsm"], eot=20, draws=100), torch.device("cpu"))
    r1, r20 = one["summary"]["robust"]["fgsm"]["mean"], twenty["summary"]["robust"]["fgsm"]["mean"]
    assert r20 <= r1 + 0.01
    assert any("EOT 1" in c for c in one["checks"]) and not any("EOT 1" in c for c in twenty["checks"])


def test_ensembles_keep_pyautoattack_verdict_and_score_all_members():
    torch.manual_seed(0)
    model = DropoutLinear(4, seed=3).eval()
    x, y = _data(model, n=24, seed=2)
    spec = _spec(["autoattack-rand", "apgd-ce", "apgd-dlr"], draws=50,
                 attack_args={"autoattack-rand": {"n_iter": 10, "eot_iter": 5}, "apgd-ce": {"n_iter": 10},
                              "apgd-dlr": {"n_iter": 10}})
    rec = evaluate(model, x, y, spec, torch.device("cpu"))
    ours = rec["summary"]["robust"]["autoattack-rand"]["mean"]
    theirs = rec["summary"]["pyautoattack_verdict"]["autoattack-rand"]
    assert 0 <= theirs <= 1 and len(rec["examples"]["pyautoattack_verdict"]["autoattack-rand"]) == len(y)
    clean = model.expected_accuracy(x, y).mean().item()
    assert ours < clean  # the strongest points are attacked points, not the clean x
    # the default attack list of a randomized model adds APGD-DLR; EOT defaults to 20
    res = robustness.resolve(EvalSpec(), True, 4)
    assert "apgd-dlr" in res.attacks and res.eot == 20 and res.draws == 20
    assert robustness.resolve(EvalSpec(), False, 4).attacks == DEFAULT_ATTACKS


def test_head_only_eot_equals_full_passes_with_the_same_masks():
    torch.manual_seed(0)
    student = create_model("darht-student", num_classes=4, in_chans=1, img_size=12, backbone="small-cnn",
                           backbone_kwargs={"width": 4}, num_teachers=2, dropout=0.3, mc_samples=3).eval()
    x, y = torch.rand(5, 1, 12, 12), torch.randint(0, 4, (5,))
    r, c = 6, student.mc_samples
    masks = torch.empty(r * c, 5, student.num_features).bernoulli_(0.7).div_(0.7)
    xa = x.clone().requires_grad_(True)
    loss = sum(F.cross_entropy(z, y, reduction="sum") for z in student.forward_draws(xa, r, masks)) / r
    (g_draws,) = torch.autograd.grad(loss, xa)
    g_full = torch.zeros_like(x)
    for i in range(r):  # R complete forward passes (backbone each time), draw i's masks
        xi = x.clone().requires_grad_(True)
        logits = student.head_samples(student.forward_features(xi), masks[i * c:(i + 1) * c])[0].mean(0)
        g_full += torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xi)[0] / r
    assert torch.allclose(g_draws, g_full, atol=1e-6, rtol=1e-5)
    # the attacks use it: EOT through logits_and_input_grad matches the same average of passes
    torch.manual_seed(1)
    _, g_eot = logits_and_input_grad(student, x, lambda z: F.cross_entropy(z, y, reduction="sum"), eot=r)
    torch.manual_seed(1)
    drawn = torch.empty(r * c, 5, student.num_features).bernoulli_(0.7).div_(0.7)
    xb = x.clone().requires_grad_(True)
    ref = sum(F.cross_entropy(z, y, reduction="sum") for z in student.forward_draws(xb, r, drawn)) / r
    assert torch.allclose(g_eot, torch.autograd.grad(ref, xb)[0], atol=1e-6)


def test_a_darht_student_reports_both_faces():
    torch.manual_seed(0)
    student = create_model("darht-student", num_classes=4, in_chans=1, img_size=12, backbone="small-cnn",
                           backbone_kwargs={"width": 4}, num_teachers=2).eval()
    x, y = torch.rand(12, 1, 12, 12), torch.randint(0, 4, (12,))
    spec = EvalSpec(attacks=["fgsm"], eps=0.05, n=None, draws=5, eot=3, progress=False)
    rec = evaluate(student, x, y, spec, torch.device("cpu"))
    det = rec["faces"]["deterministic"]
    assert rec["face"] == "mc" and rec["randomized"] and not det["randomized"]
    assert det["eot"] == 1 and det["draws"] == 1 and det["attacks"] == rec["attacks"]
    assert not student.deterministic  # the MC face is restored
    student.set_deterministic(True)
    torch.manual_seed(0)
    alone = evaluate(student, x, y, spec, torch.device("cpu"))
    assert alone["examples"]["clean"] == det["examples"]["clean"]
    from darht.report.tables import markdown_table

    table = markdown_table(rec)
    assert "MC robust" in table and "det. robust" in table


def test_deterministic_numbers_are_those_of_the_plain_code_path():
    """For a deterministic model: each attack once on the clean-correct examples, judged by one
    prediction (the code path before the verdict rule), with the same RNG stream."""
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_chans=1, img_size=12, width=4).eval()
    x, y = torch.rand(40, 1, 12, 12), torch.randint(0, 4, (40,))
    with torch.no_grad():
        y = torch.where(torch.rand(40) < 0.7, model(x).argmax(1), y)  # most examples clean-correct
    attacks = ["fgsm", "pgd", "cw-inf", "apgd-ce", "square"]
    args = {"apgd-ce": {"n_iter": 5}, "square": {"n_queries": 20}, "cw-inf": {"steps": 3}, "pgd": {"steps": 3}}
    spec = EvalSpec(attacks=attacks, eps=0.03, n=None, batch_size=16, attack_args=args, progress=False)
    torch.manual_seed(5)
    rec = evaluate(model, x, y, spec, torch.device("cpu"))
    assert not rec["randomized"] and rec["eot"] == 1 and rec["draws"] == 1 and "faces" not in rec
    from darht.attacks import PAPER_DEFAULTS

    torch.manual_seed(5)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    todo = clean.nonzero().flatten()
    for name in attacks:
        robust = torch.zeros(40, dtype=torch.bool)
        for i in range(0, len(todo), 16):
            idx = todo[i:i + 16]
            x_adv = ATTACKS.get(name)(model, x[idx], y[idx], eps=0.03, **{**PAPER_DEFAULTS[name], **args.get(name, {})})
            with torch.no_grad():
                robust[idx] = model(x_adv).argmax(1) == y[idx]
        assert rec["examples"]["robust"][name] == robust.int().tolist(), name
        assert rec["summary"]["robust"][name]["mean"] == pytest.approx(robust.float().mean().item())
    assert rec["examples"]["clean"] == clean.int().tolist()


def test_eot_sweep_reports_each_setting_and_a_convergence_verdict(binary):
    from darht.evaluation.sweep import stopped_falling

    model, x, y = binary
    torch.manual_seed(0)
    rec = evaluate(model, x, y, _spec(["fgsm", "pgd"], draws=50, eot_sweep=[1, 5, 20]), torch.device("cpu"))
    sweep = rec["eot_sweep"]
    assert sweep["settings"] == [1, 5, 20] and set(sweep["attacks"]) == {"fgsm", "pgd"}
    fg = sweep["attacks"]["fgsm"]["robust"]
    assert fg[2] <= fg[0] + 0.02  # more EOT is not weaker
    # the verdict: a drop within 0.5 pp (or 2 SE) counts as stopped; a clear drop does not
    assert stopped_falling(torch.full((100,), 0.5), torch.full((100,), 0.498))[0]
    assert not stopped_falling(torch.full((100,), 0.6), torch.full((100,), 0.4))[0]
