"""Evaluation: per-example bookkeeping, trials, W-Robust, `darht evaluate` / `compare` / `transfer`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from darht.attacks.fgsm import fgsm
from darht.cli import main
from darht.data import load_dataset
from darht.evaluation.checks import sanity_checks
from darht.evaluation.robustness import evaluate, summarize
from darht.evaluation.spec import EvalSpec, Resolved, trial_indices
from darht.evaluation.transfer import select_teachers
from darht.models import create_model
from darht.models.io import load_model, save_model

SYN = {"n": 96, "num_classes": 4, "shape": (1, 12, 12), "seed": 3}


def _train_small(seed: int = 0, steps: int = 40):
    torch.manual_seed(seed)
    data = load_dataset("synthetic", "train", **SYN)
    model = create_model("small-cnn", num_classes=4, in_chans=1, img_size=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data.float_x(), data.y
    model.train()
    for i in range(steps):
        idx = torch.randint(0, len(x), (32,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = _train_small()
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_model(model, path)
    return model, path


def test_trial_indices_are_seeded_subsets_disjoint_when_they_fit():
    a, disjoint = trial_indices(50, 10, 3, seed=1)
    b, _ = trial_indices(50, 10, 3, seed=1)
    assert disjoint and all(torch.equal(u, v) for u, v in zip(a, b))
    assert all(len(t) == 10 and len(set(t.tolist())) == 10 for t in a)
    assert len(set(torch.cat(a).tolist())) == 30  # no example in two trials
    assert not torch.equal(trial_indices(50, 10, 3, seed=2)[0][0], a[0])
    assert torch.equal(trial_indices(7, None, 1, 0)[0][0], torch.arange(7))
    over, disjoint = trial_indices(20, 10, 3, seed=0)  # 30 > 20: overlapping, and flagged
    assert not disjoint and all(len(set(t.tolist())) == 10 for t in over)
    assert len(trial_indices(7, 100, 2, 0)[0][0]) == 7  # n capped at the pool


def test_summarize_matches_direct_means():
    clean = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    pgd = torch.tensor([1, 0, 0, 1, 0, 0], dtype=torch.bool)
    subsets = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]
    rec = summarize({"clean": clean, "pgd": pgd}, subsets)
    assert rec["trials"][0]["clean"] == pytest.approx(2 / 3)
    assert rec["trials"][0]["robust"]["pgd"] == pytest.approx(1 / 3)
    assert rec["trials"][1]["w_robust"]["pgd"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    # trial 1: clean 2/3, robust 1/3 -> W-Robust 1/2; trial 2 likewise
    assert rec["summary"]["w_robust"]["pgd"]["mean"] == pytest.approx(0.5)
    assert rec["summary"]["clean"]["std"] == pytest.approx(0.0)


def test_evaluate_numbers_equal_a_direct_computation(trained):
    model, _ = trained
    data = load_dataset("synthetic", "test", **SYN)
    x, y = data.float_x(), data.y
    spec = EvalSpec(attacks=["fgsm"], eps=0.1, n=None, trials=1, batch_size=32, progress=False)
    rec = evaluate(model, x, y, spec, torch.device("cpu"))
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    x_adv = fgsm(model, x, y, eps=0.1)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y) & clean
    assert rec["summary"]["clean"]["mean"] == pytest.approx(clean.float().mean().item())
    assert rec["summary"]["robust"]["fgsm"]["mean"] == pytest.approx(robust.float().mean().item())
    assert rec["summary"]["robust"]["worst"]["mean"] == pytest.approx(robust.float().mean().item())
    assert rec["examples_attacked"] == int(clean.sum())
    assert rec["summary"]["robust"]["fgsm"]["mean"] < rec["summary"]["clean"]["mean"]


def test_worst_case_is_per_example(trained):
    model, _ = trained
    data = load_dataset("synthetic", "test", **SYN)
    spec = EvalSpec(attacks=["fgsm", "pgd"], eps=0.08, n=None, batch_size=64, progress=False,
                    attack_args={"pgd": {"steps": 2, "start": "none"}})
    rec = evaluate(model, data.float_x(), data.y, spec, torch.device("cpu"))
    r = rec["summary"]["robust"]
    assert r["worst"]["mean"] <= min(r["fgsm"]["mean"], r["pgd"]["mean"]) + 1e-12


def test_sanity_checks_flag_explicit_eot_1_square_and_overlap():
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x.flatten(1)) + torch.randn(len(x), 3)

    x, y = torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long)
    one = Resolved(["pgd"], True, 1, 20, True)
    notes = sanity_checks(Noisy(), x, y, {}, torch.device("cpu"), res=one)
    assert any("EOT 1" in n for n in notes)
    rec = {"summary": {"robust": {"pgd": {"mean": 0.5}, "square": {"mean": 0.3}}}, "trials_disjoint": False}
    notes = sanity_checks(Noisy(), x, y, rec, torch.device("cpu"), res=Resolved(["pgd", "square"], True, 20, 20, False))
    assert not any("EOT 1" in n for n in notes)
    assert any("square (black-box)" in n for n in notes) and any("overlap" in n for n in notes)


def test_cli_evaluate_prints_table_and_json_matching_direct_computation(trained, tmp_path, capsys):
    model, path = trained
    out = tmp_path / "rec.json"
    data_args = [a for k, v in SYN.items() for a in ("--data-arg", f"{k}={list(v) if isinstance(v, tuple) else v}")]
    code = main(["evaluate", "--checkpoint", str(path) + ".safetensors", "--data", "synthetic", *data_args, "--attacks",
                 "fgsm", "--eps", "0.1", "--n", "40", "--trials", "3", "--batch-size", "16", "--out", str(out),
                 "--no-progress", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| fgsm |" in printed and "W-Robust" in printed
    rec = json.loads(out.read_text())
    data = load_dataset("synthetic", "test", **SYN)
    x, y = data.float_x(), data.y
    loaded = load_model(str(path) + ".safetensors").eval()
    with torch.no_grad():
        clean = loaded(x).argmax(1) == y
    robust = clean & (loaded(fgsm(loaded, x, y, eps=0.1)).argmax(1) == y)
    subsets, disjoint = trial_indices(len(x), 40, 3, 0)
    assert not disjoint and rec["trials_disjoint"] is False  # 3 x 40 > 96 examples
    for t, idx in zip(rec["trials"], subsets):
        assert t["clean"] == pytest.approx(clean[idx].float().mean().item())
        assert t["robust"]["fgsm"] == pytest.approx(robust[idx].float().mean().item())
        assert t["w_robust"]["fgsm"] == pytest.approx((t["clean"] + t["robust"]["fgsm"]) / 2)
    assert rec["trials_count"] == 3 and rec["n"] == 40


def test_select_teachers_picks_lowest_mutual_transfer():
    m = {"a": {"a": 1, "b": 0.9, "c": 0.2}, "b": {"a": 0.8, "b": 1, "c": 0.5}, "c": {"a": 0.3, "b": 0.4, "c": 1}}
    sel = select_teachers(m, 2)
    assert sel["selected"] == ["a", "c"]
    assert sel["mean_pairwise_transfer"] == pytest.approx(0.25)


def test_pool_bounds_the_examples_attacked(trained):
    model, _ = trained
    data = load_dataset("synthetic", "test", **SYN)
    spec = EvalSpec(attacks=["fgsm"], eps=0.05, n=10, trials=4, pool=20, batch_size=32, progress=False)
    rec = evaluate(model, data.float_x(), data.y, spec, torch.device("cpu"))
    assert rec["pool"] <= 20 and rec["n"] == 10 and len(rec["trials"]) == 4


@pytest.mark.parametrize("mode", ["mc", "deterministic"])
def test_student_is_evaluated_in_both_modes(tmp_path, capsys, mode):
    student = create_model("darht-student", num_classes=4, in_chans=1, img_size=12, backbone="small-cnn",
                           backbone_kwargs={"width": 4}, num_teachers=2, dropout=0.3, mc_samples=4)
    path = tmp_path / "student"
    save_model(student, path)
    out = tmp_path / f"{mode}.json"
    data_args = [a for k, v in SYN.items() for a in ("--data-arg", f"{k}={list(v) if isinstance(v, tuple) else v}")]
    assert main(["evaluate", "--checkpoint", str(path) + ".safetensors", "--data", "synthetic", *data_args,
                 "--attacks", "fgsm", "--eps", "0.05", "--mode", mode, "--no-progress", "--device", "cpu",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["randomized"] is (mode == "mc")
    assert rec["eot"] == (20 if mode == "mc" else 1) and rec["draws"] == (20 if mode == "mc" else 1)
    assert "faces" not in rec  # --mode picks one face; the default reports both


def test_mode_flag_refuses_models_without_mc_head(trained, capsys):
    _, path = trained
    data_args = [a for k, v in SYN.items() for a in ("--data-arg", f"{k}={list(v) if isinstance(v, tuple) else v}")]
    assert main(["evaluate", "--checkpoint", str(path) + ".safetensors", "--data", "synthetic", *data_args,
                 "--attacks", "", "--mode", "mc", "--no-progress"]) == 2
    assert "MC dropout" in capsys.readouterr().err
    # and a model of the wrong class count is refused before any attack
    assert main(["evaluate", "--checkpoint", str(path) + ".safetensors", "--data", "synthetic",
                 "--attacks", "", "--no-progress"]) == 2
    assert "4 classes" in capsys.readouterr().err


def test_a_model_returning_probabilities_is_flagged(trained):
    model, _ = trained

    class Probabilities(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x).softmax(1)

    data = load_dataset("synthetic", "test", **SYN)
    spec = EvalSpec(attacks=["fgsm"], eps=0.05, n=32, batch_size=32, progress=False)
    rec = evaluate(Probabilities(), data.float_x(), data.y, spec, torch.device("cpu"))
    assert any("probabilities" in c for c in rec["checks"])
    rec = evaluate(model, data.float_x(), data.y, spec, torch.device("cpu"))
    assert not any("probabilities" in c for c in rec["checks"])


@pytest.mark.parametrize("attack", ["apgd-ce", "square", "fgsm"])
def test_validation_with_an_autoattack_attack_uses_its_iterations(trained, attack):
    """eval.steps reaches each attack under its own keyword (steps, n_iter, n_queries; none for FGSM)."""
    from darht.engine.trainer import validate

    model, _ = trained
    data = load_dataset("synthetic", "test", **SYN)
    clean, robust, n = validate(model, data.float_x()[:16], data.y[:16], attack, eps=0.05, steps=3,
                                batch_size=16, device=torch.device("cpu"))
    assert n == 16 and 0 <= robust <= clean <= 16
