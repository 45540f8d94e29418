"""The DARHT student, frozen teachers and the distillation methods, checked against direct formulas."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from darht.errors import DarhtError
from darht.methods import ard as ard_mod
from darht.methods import mtard as mtard_mod
from darht.methods import rslad as rslad_mod
from darht.methods.darht import Darht, DarhtOfficial, official_phase
from darht.models.teachers import FrozenTeacher, load_teacher
from darht.models import create_model, is_randomized
from darht.models.student import DarhtStudent
from darht.registry import METHODS

K, C, S = 10, 1, 16  # classes, channels, image size
SMALL = {"width": 8}  # keeps every network tiny: the tests check math, not accuracy


def teachers(j: int, seed: int = 1) -> list[FrozenTeacher]:
    """Random small CNNs with their classifier rescaled to logits of std ~4: confident, distinct
    teachers, so that KL directions and teacher weights visibly matter."""
    torch.manual_seed(seed)
    return [FrozenTeacher(sharp(create_model("small-cnn", K, C, S, **SMALL))) for _ in range(j)]


def sharp(net: torch.nn.Module) -> torch.nn.Module:
    """Rescale a random small CNN's classifier to logits of std ~4 (random init is near uniform)."""
    probe, _ = batch(16, seed=99)
    with torch.no_grad():
        fc = net.classifier_head
        fc.weight.mul_(4.0 / net.eval()(probe).std())
        fc.bias.uniform_(-2.0, 2.0)
    return net


def student(j: int = 2, dropout: float = 0.3, mc: int = 4) -> DarhtStudent:
    torch.manual_seed(0)
    return Darht.build_model("small-cnn", K, C, S, num_teachers=j, dropout=dropout, mc_samples=mc, **SMALL)


def batch(n: int = 8, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, C, S, S, generator=g), torch.randint(0, K, (n,), generator=g)


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, straight from the definition, from probabilities."""
    return (p * (p.log() - q.log())).sum(-1)


# -- the student ----------------------------------------------------------------------------------
@pytest.mark.parametrize("train", [False, True])
def test_mc_head_equals_c_full_forwards_with_same_masks(train: bool) -> None:
    net = student(j=3, dropout=0.4, mc=5).train(train)
    x, _ = batch(6)
    torch.manual_seed(11)
    logits, maps = net.forward_all(x)
    # the same masks, drawn the way the student draws them (one [C,N,d] call after the backbone)
    torch.manual_seed(11)
    masks = net.sample_masks(6, logits)
    assert masks.shape == (5, 6, net.num_features)
    keep = masks != 0
    assert torch.allclose(masks[keep], torch.tensor(1 / 0.6))  # inverted dropout scaling
    assert 0.3 < (~keep).float().mean().item() < 0.5  # about p = 0.4 of the units dropped
    assert not torch.equal(masks[0], masks[1])  # the C samples differ
    # naive: C complete forward passes (backbone each time), averaged before softmax
    naive_logits, naive_maps = [], []
    for c in range(5):
        h = net.backbone.forward_features(x)
        m = net.teacher_map(h * masks[c])
        naive_maps.append(m.view(6, 3, K))
        naive_logits.append(net.classifier(m))
    assert torch.allclose(logits, torch.stack(naive_logits).mean(0), atol=1e-6, rtol=0)
    assert torch.allclose(maps, torch.stack(naive_maps).mean(0), atol=1e-6, rtol=0)


def test_student_modes_and_contract() -> None:
    net = student(j=2).eval()
    x, _ = batch(4)
    assert net.randomized and is_randomized(net)
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, net(x))  # MC dropout stays on at test time
    net.set_deterministic(True)
    assert not net.randomized and not is_randomized(net)
    h = net.forward_features(x)
    assert h.shape == (4, net.num_features)
    direct = net.classifier(net.teacher_map(h))
    assert torch.allclose(net(x), direct, atol=1e-6) and torch.allclose(net.forward_head(h), direct, atol=1e-6)
    logits, maps = net.forward_all(x)
    assert logits.shape == (4, K) and maps.shape == (4, 2, K)
    assert not student(dropout=0.0).randomized


def test_student_save_load_round_trip(tmp_path) -> None:
    from darht.models.io import load_model, save_model

    net = student(j=2, dropout=0.25, mc=3).eval()
    save_model(net, tmp_path / "s")
    back = load_model(tmp_path / "s.safetensors").eval()
    assert isinstance(back, DarhtStudent) and back.spec == net.spec
    assert back.dropout == 0.25 and back.mc_samples == 3 and back.num_teachers == 2
    x, _ = batch(4)
    net.set_deterministic(True), back.set_deterministic(True)
    assert torch.equal(net(x), back(x))
    spec = copy.deepcopy(net.spec)
    rebuilt = create_model(**spec)
    assert rebuilt.state_dict().keys() == net.state_dict().keys()


def test_build_model_errors() -> None:
    with pytest.raises(DarhtError):
        Darht.build_model("small-cnn", K, C, S, num_teachers=0)
    with pytest.raises(DarhtError):  # 2 maps, 3 teachers
        Darht(student(j=2), teachers(3))
    with pytest.raises(DarhtError):
        Darht(student(j=1), teachers(1), no_such_arg=1)
    with pytest.raises(DarhtError):
        Darht(create_model("small-cnn", K, C, S, **SMALL), teachers(1))  # not a darht-student
    with pytest.raises(DarhtError):
        Darht(student(j=1), teachers(1), attack="nope")
    assert "darht" in METHODS and "darht-official" in METHODS


# -- teachers -------------------------------------------------------------------------------------
def test_teacher_frozen_and_checked(tmp_path) -> None:
    from darht.models.io import save_model

    net = create_model("small-cnn", K, C, S, **SMALL)
    save_model(net, tmp_path / "t")
    t = load_teacher(str(tmp_path / "t.safetensors"), num_classes=K, in_chans=C, img_size=S)
    assert isinstance(t, FrozenTeacher) and not t.training
    t.train()
    assert not any(m.training for m in t.modules())
    assert all(not p.requires_grad for p in t.parameters())
    x, _ = batch(4)
    out = t(x)
    assert not out.is_inference() and not out.requires_grad
    assert torch.allclose(out, net.eval()(x), atol=1e-6)
    w = torch.ones(K, requires_grad=True)
    (out * w).sum().backward()  # usable as a constant in an autograd graph
    assert torch.allclose(w.grad, out.sum(0))
    with pytest.raises(DarhtError):
        load_teacher(str(tmp_path / "t.safetensors"), num_classes=K + 1, in_chans=C, img_size=S)
    with pytest.raises(DarhtError):
        load_teacher("no/such/file.pt", num_classes=K, in_chans=C, img_size=S)
    bf = load_teacher("small-cnn", num_classes=K, in_chans=C, img_size=S, bf16=True)
    assert bf(x).dtype == torch.float32
    # NAME=PATH: a bare state dict in another project's layout (DataParallel's `module.` prefix)
    # (built with the name's default kwargs, so the file holds a default small-cnn)
    plain = create_model("small-cnn", K, C, S).eval()
    torch.save({"module." + k: v for k, v in plain.state_dict().items()}, tmp_path / "foreign.pt")
    foreign = load_teacher("small-cnn=" + str(tmp_path / "foreign.pt"), num_classes=K, in_chans=C, img_size=S)
    assert torch.allclose(foreign(x), plain(x), atol=1e-6)


# -- DARHT ----------------------------------------------------------------------------------------
def _fixed_batch(method: Darht, monkeypatch, chosen: torch.Tensor) -> None:
    """Deterministic coin and attack: the chosen examples get a fixed perturbation."""
    monkeypatch.setattr(method, "choose", lambda n, device: chosen)
    monkeypatch.setattr(method, "inner_attack", lambda x, y: (x + 0.02).clamp(0, 1))


def _mixed(x: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    return torch.where(chosen[:, None, None, None], (x + 0.02).clamp(0, 1), x)


def _student_outputs(net: DarhtStudent, x: torch.Tensor, seed: int):
    """Student logits and maps [N,K], [N,J,K] by the formula, with the masks the loss will draw."""
    torch.manual_seed(seed)
    h = net.backbone.forward_features(x)
    masks = net.sample_masks(x.shape[0], h)
    hs = h[None] if masks is None else h[None] * masks
    maps = net.teacher_map(hs)
    return net.classifier(maps).mean(0), maps.mean(0).view(x.shape[0], net.num_teachers, K)


def test_darht_paper_loss_equals_direct(monkeypatch) -> None:
    ts = teachers(3)
    method = Darht(student(j=3).eval(), ts)
    x, y = batch(6)
    chosen = torch.tensor([True, False, True, True, False, False])
    _fixed_batch(method, monkeypatch, chosen)
    torch.manual_seed(5)
    out = method.loss(x, y)
    xm = _mixed(x, chosen)
    logits, maps = _student_outputs(method.student, xm, 5)
    t_logits = [T(xm) for T in ts]
    total, w_sum = 0.0, torch.zeros(3)
    for i in range(6):
        ce = -F.log_softmax(logits[i], 0)[y[i]]
        t_ce = torch.stack([-F.log_softmax(t[i], 0)[y[i]] for t in t_logits])
        w = torch.exp(-t_ce) / torch.exp(-t_ce).sum()
        assert math.isclose(w.sum().item(), 1.0, rel_tol=1e-6)
        kls = torch.stack([kl_rows(F.softmax(maps[i, j], 0), F.softmax(t_logits[j][i], 0)) for j in range(3)])
        total = total + ce + (w * kls).sum()
        w_sum += w
    assert torch.allclose(out["loss"], total / 6, atol=1e-5)
    assert torch.allclose(torch.stack([out[f"w_teacher{j}"] for j in range(3)]), w_sum / 6, atol=1e-6)
    assert math.isclose(sum(out[f"w_teacher{j}"].item() for j in range(3)), 1.0, rel_tol=1e-6)
    assert out["adv_frac"].item() == 0.5
    assert out["loss"].requires_grad and not out["kd"].requires_grad


@pytest.mark.parametrize("epoch,phase", [(3, "ce+kd"), (9, "kd"), (0, "ce")])
def test_darht_official_loss_equals_direct(monkeypatch, epoch: int, phase: str) -> None:
    ts = teachers(2)
    method = DarhtOfficial(student(j=2).eval(), ts)
    assert method.student.dropout == 0.0 and not method.student.randomized
    method.start_epoch(epoch, 10)
    assert method.phase() == phase
    x, y = batch(5)
    chosen = torch.ones(5, dtype=torch.bool)
    _fixed_batch(method, monkeypatch, chosen)
    out = method.loss(x, y)
    xm = _mixed(x, chosen)
    logits, maps = _student_outputs(method.student, xm, 0)
    ce = F.cross_entropy(logits, y)
    kd = 0.0
    for j, T in enumerate(ts):
        t = T(xm)
        w = math.exp(-F.cross_entropy(t, y).item())  # exp(-batch-mean CE), not normalised
        kd = kd + w * kl_rows(F.softmax(t, 1), F.softmax(maps[:, j], 1)).mean()  # KL(T || head)
    expect = {"ce": ce, "ce+kd": ce + kd, "kd": kd}[phase]
    assert torch.allclose(out["loss"], expect, atol=1e-5)


def test_official_phase_schedule() -> None:
    assert [official_phase(e, 350) for e in (0, 49, 50, 117, 118, 349)] == \
        ["ce", "ce", "ce+kd", "ce+kd", "kd", "kd"]
    for epochs in (7, 20, 100):  # boundaries as fractions 50/350 and 118/350 of the run
        for e in range(epochs):
            f = e / epochs
            assert official_phase(e, epochs) == ("ce" if f < 50 / 350 else "ce+kd" if f < 118 / 350 else "kd")


class Counter:
    """Records (batch size, training flag) of every backbone pass."""

    def __init__(self, net: DarhtStudent):
        self.calls: list[tuple[int, bool]] = []
        inner = net.backbone.forward_features

        def counted(x):
            self.calls.append((x.shape[0], net.training))
            return inner(x)

        net.backbone.forward_features = counted


def test_only_chosen_examples_are_attacked() -> None:
    method = Darht(student(j=1).train(), teachers(1), steps=2)
    count = Counter(method.student)
    x, y = batch(16)
    torch.manual_seed(7)
    out = method.loss(x, y)
    n_chosen = round(out["adv_frac"].item() * 16)
    assert 0 < n_chosen < 16
    attack_seen = sum(n for n, training in count.calls if not training)
    assert attack_seen == 2 * n_chosen  # steps x chosen examples, nothing else in eval mode
    assert [c for c in count.calls if c[1]] == [(16, True)]  # one training forward of the batch
    assert method.student.training  # mode restored after the attack
    # the mixed batch: untouched where not chosen, within eps where chosen
    torch.manual_seed(7)
    xm, chosen = method.mix(x, y)
    assert chosen.sum().item() == n_chosen
    assert torch.equal(xm[~chosen], x[~chosen])
    assert (xm - x).abs().max() <= method.eps + 1e-6 and not torch.equal(xm[chosen], x[chosen])


def test_official_coin_is_per_batch() -> None:
    method = DarhtOfficial(student(j=1), teachers(1))
    torch.manual_seed(0)
    for _ in range(10):
        c = method.choose(8, torch.device("cpu"))
        assert c.all() or not c.any()


def test_teachers_unchanged_and_gradless() -> None:
    ts = teachers(2)
    before = [copy.deepcopy(t.state_dict()) for t in ts]
    method = Darht(student(j=2), ts, steps=1)
    opt = torch.optim.SGD(method.model.parameters(), lr=0.1, momentum=0.9)
    x, y = batch(8)
    first = copy.deepcopy(method.model.state_dict())
    for _ in range(3):
        method.model.train()
        opt.zero_grad()
        method.loss(x, y)["loss"].backward()
        opt.step()
    for t, b in zip(ts, before):
        assert all(torch.equal(v, b[k]) for k, v in t.state_dict().items())
        assert all(p.grad is None for p in t.parameters()) and not t.training
    assert any(not torch.equal(v, first[k]) for k, v in method.model.state_dict().items())


# -- baselines ------------------------------------------------------------------------------------
def _shift(x: torch.Tensor) -> torch.Tensor:
    return (x + 0.03).clamp(0, 1)


def _fake_pgd(record: dict, perturb=_shift):
    """Stands in for PGD: records its arguments, returns a fixed perturbation."""
    def attack(model, x, y, **kw):
        record.update(kw, model=model)
        return perturb(x)
    return attack


def test_kd_loss_equals_direct() -> None:
    ts = teachers(2)
    net = sharp(create_model("small-cnn", K, C, S, **SMALL))
    method = METHODS.get("kd")(net, ts, alpha=0.7, t=3.0)
    x, y = batch(6)
    out = method.loss(x, y)
    p = torch.stack([F.softmax(T(x) / 3.0, 1) for T in ts]).mean(0)
    s = net(x)
    expect = 0.7 * 9 * kl_rows(p, F.softmax(s / 3, 1)).mean() + 0.3 * F.cross_entropy(s, y)
    assert torch.allclose(out["loss"], expect, atol=1e-5)


def test_ard_loss_equals_direct(monkeypatch) -> None:
    rec: dict = {}
    monkeypatch.setattr(ard_mod, "pgd", _fake_pgd(rec))
    ts = teachers(1)
    net = sharp(create_model("small-cnn", K, C, S, **SMALL))
    method = ard_mod.ARD(net, ts, alpha=0.6, t=5.0)
    x, y = batch(6)
    out = method.loss(x, y)
    assert rec["model"] is net and rec["loss"] == "ce" and rec["start"] == "uniform"
    p = F.softmax(ts[0](x) / 5, 1)  # teacher on CLEAN x
    q = F.softmax(net(_shift(x)) / 5, 1)
    expect = 0.6 * 25 * kl_rows(p, q).mean() + 0.4 * F.cross_entropy(net(x), y)
    assert torch.allclose(out["loss"], expect, atol=1e-5)


def test_rslad_loss_equals_direct(monkeypatch) -> None:
    rec: dict = {}
    monkeypatch.setattr(rslad_mod, "pgd", _fake_pgd(rec))
    ts = teachers(2)
    net = sharp(create_model("small-cnn", K, C, S, **SMALL))
    method = rslad_mod.RSLAD(net, ts)
    x, y = batch(6)
    out = method.loss(x, y)
    p = (F.softmax(ts[0](x), 1) + F.softmax(ts[1](x), 1)) / 2  # averaged soft labels, clean x
    assert rec["loss"] == "kl" and rec["start"] == "normal" and torch.allclose(rec["target_probs"], p)
    adv = kl_rows(p, F.softmax(net(_shift(x)), 1)).mean()
    nat = kl_rows(p, F.softmax(net(x), 1)).mean()
    assert torch.allclose(out["loss"], 5 / 6 * adv + 1 / 6 * nat, atol=1e-5)


def test_mtard_loss_and_weight_update(monkeypatch) -> None:
    rec: dict = {}
    t_adv, t_nat = teachers(2)
    net = sharp(create_model("small-cnn", K, C, S, **SMALL))
    method = mtard_mod.MTARD(net, [t_adv, t_nat], eta=0.8)
    method.start_epoch(0, 10, lr_scale=0.5)

    def step(x, y, perturb):
        """The method's loss and the two KL terms computed directly, with `perturb` as the attack."""
        monkeypatch.setattr(mtard_mod, "pgd", _fake_pgd(rec, perturb))
        out = method.loss(x, y)
        xa = perturb(x)
        return (out, kl_rows(F.softmax(t_adv(xa), 1), F.softmax(net(xa), 1)).mean().item(),
                kl_rows(F.softmax(t_nat(x), 1), F.softmax(net(x), 1)).mean().item())

    out1, a1, n1 = step(*batch(6, seed=1), _shift)
    assert rec["loss"] == "ce" and rec["start"] == "normal" and rec["model"] is net
    assert math.isclose(method.w_nat, 0.5, rel_tol=1e-9)  # r_adv = r_nat = 1 at the first step
    assert math.isclose(out1["loss"].item(), 0.5 * a1 + 0.5 * n1, rel_tol=1e-5)
    with torch.no_grad():  # as if the student had learned the natural teacher: L_nat drops, L_adv not
        net.load_state_dict(t_nat.model.state_dict())
        net.classifier_head.weight.mul_(0.7)
    out2, a2, n2 = step(*batch(6, seed=2), _shift)
    r_adv, r_nat = a2 / a1, n2 / n1
    w_nat = 0.5 - 0.8 * 0.5 * (0.5 - r_nat / (r_adv + r_nat))  # eta decayed with the lr
    assert abs(w_nat - 0.5) > 1e-2, w_nat  # the update is visible
    assert math.isclose(method.w_nat, w_nat, rel_tol=1e-5)
    assert math.isclose(out2["loss"].item(), (1 - w_nat) * a2 + w_nat * n2, rel_tol=1e-5)
    resumed = mtard_mod.MTARD(net, [t_adv, t_nat], eta=0.8)
    resumed.load_state_dict(method.state_dict())
    assert resumed.state_dict() == method.state_dict()
    with pytest.raises(DarhtError):
        mtard_mod.MTARD(net, [t_adv])


def test_baselines_reject_bad_args() -> None:
    net = create_model("small-cnn", K, C, S, **SMALL)
    for name in ("kd", "ard", "rslad"):
        with pytest.raises(DarhtError):
            METHODS.get(name)(net, teachers(1), bogus=1)
        with pytest.raises(DarhtError):
            METHODS.get(name)(net, [])
        assert METHODS.get(name).needs_teachers
    with pytest.raises(DarhtError):
        METHODS.get("ard")(net, teachers(1), t=-1)
