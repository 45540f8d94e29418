"""Transferability (`darht.evaluation.transfer`): rates equal direct counts, seeded sampling of the
examples, the student-wrong-clean exclusion, and the verdict rule for randomized models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from darht.errors import DarhtError
from darht.evaluation import transfer
from darht.evaluation.transfer import student_transfer, transfer_matrix
from darht.models import create_model
from darht.report.tables import transfer_markdown

SCALE = 1000  # inputs carry their index / SCALE in pixel 0 and an "attacked" flag in pixel 1


def _inputs(n: int) -> torch.Tensor:
    x = torch.zeros(n, 1, 2, 2)
    x[:, 0, 0, 0] = torch.arange(n) / SCALE
    return x


def _index(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (x[:, 0, 0, 0] * SCALE).round().long(), x[:, 0, 0, 1] > 0.5


class _Fixed(torch.nn.Module):
    """A deterministic 'model' whose predictions are a table: input i predicts clean_pred[i], or
    adv_pred[i] once attacked."""

    def __init__(self, clean_pred, adv_pred, classes: int = 3):
        super().__init__()
        self.clean_pred, self.adv_pred, self.classes = torch.as_tensor(clean_pred), torch.as_tensor(adv_pred), classes
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        idx, attacked = _index(x)
        pred = torch.where(attacked, self.adv_pred[idx], self.clean_pred[idx])
        return F.one_hot(pred, self.classes).float() * 10 + self.w


class _Cycling(torch.nn.Module):
    """A randomized 'model' (label 0) whose probability of being right on input i is known exactly:
    call k is right iff (k + i) mod 4 < m[i], so any 4 consecutive calls (and any multiple of 4
    draws) are right on exactly m[i] / 4 of them. m_clean / m_adv: before / after the attack."""

    randomized = True

    def __init__(self, m_clean, m_adv):
        super().__init__()
        self.m_clean, self.m_adv = torch.as_tensor(m_clean), torch.as_tensor(m_adv)
        self.k = 0
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        idx, attacked = _index(x)
        m = torch.where(attacked, self.m_adv[idx], self.m_clean[idx])
        right = (self.k + idx) % 4 < m
        self.k += 1
        return F.one_hot(torch.where(right, 0, 1), 3).float() * 10 + self.w


def _flag_attack(model, x, y, *, eps, **kw):
    x = x.clone()
    x[:, 0, 0, 1] = 1.0
    return x


@pytest.fixture
def flag_attack(monkeypatch):
    """Every attack name resolves to `_flag_attack` (taking `eot`); records the keywords it is given."""
    calls = []

    def attack(model, x, y, *, eps, **kw):
        calls.append(kw)
        return _flag_attack(model, x, y, eps=eps)

    monkeypatch.setattr(transfer.ATTACKS, "get", lambda name: attack)
    monkeypatch.setattr(transfer.ATTACKS, "meta", lambda name: {"eot": "eot"})
    return calls


def _direct(fs: torch.Tensor, ft: dict[str, torch.Tensor]) -> dict:
    """The student rates computed directly from 0/1 (or expected) fooled vectors."""
    out = {"examples": len(fs), "student_fooled": fs.sum().item(), "teachers": {}}
    for t, f in ft.items():
        out["teachers"][t] = {"transfer_rate": (fs * f).sum().item() / fs.sum().item(),
                              "teacher_fooled": f.sum().item(), "both_fooled": (fs * f).sum().item(),
                              "student_recovery": (f * (1 - fs)).sum().item() / f.sum().item()}
    return out


def _assert_rates(res: dict, direct: dict) -> None:
    assert res["examples"] == direct["examples"]
    assert res["student_fooled"] == pytest.approx(direct["student_fooled"])
    for t, v in direct["teachers"].items():
        for k, val in v.items():
            assert res["teachers"][t][k] == pytest.approx(val), (t, k)
    assert res["mean_transfer_rate"] == pytest.approx(
        sum(v["transfer_rate"] for v in direct["teachers"].values()) / len(direct["teachers"]))


# idx:                  0  1  2  3  4  5  6  7  8  9 10 11
S_CLEAN = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0])   # student wrong clean on 9, 10
S_ADV = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0])     # fooled on 0..5 and 9
T1_ADV = torch.tensor([1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0])    # fooled on 0, 1, 2, 6, 7, 9, 10
T2_CLEAN = torch.tensor([0] * 11 + [2])                        # wrong clean on 11
T2_ADV = torch.tensor([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0])    # fooled on 0, 10


def test_transfer_rates_equal_direct_counts(flag_attack):
    x, y = _inputs(12), torch.zeros(12, dtype=torch.long)
    student = _Fixed(S_CLEAN, S_ADV)
    t1 = _Fixed(torch.zeros(12, dtype=torch.long), T1_ADV)
    t2 = _Fixed(T2_CLEAN, T2_ADV)
    res = student_transfer(student, {"t1": t1, "t2": t2}, x, y, eps=0.0, n=None)
    assert res["index"] == list(range(11))                 # example 11 is wrong clean for t2
    assert res["pool"] == 11
    assert res["student_wrong_clean"] == 2 and res["student_wrong_clean_index"] == [9, 10]
    # main numbers: over 0..8, where the student is right clean
    assert res["examples"] == 9
    assert res["student_fooled"] == 6
    assert res["teachers"]["t1"]["transfer_rate"] == pytest.approx(3 / 6)
    assert res["teachers"]["t2"]["transfer_rate"] == pytest.approx(1 / 6)
    assert res["teachers"]["t1"]["student_recovery"] == pytest.approx(2 / 5)   # 6, 7: teacher fooled, student not
    assert res["teachers"]["t2"]["student_recovery"] == pytest.approx(0 / 1)
    fooled = {"t1": (T1_ADV != 0).double(), "t2": (T2_ADV != 0).double()}
    fs = (S_ADV != 0).double()
    main = torch.arange(9)
    _assert_rates(res, _direct(fs[main], {k: v[main] for k, v in fooled.items()}))
    # all examples: 0..10, the student-wrong-clean 9 and 10 included
    alle = res["all_examples"]
    assert alle["examples"] == 11 and alle["student_fooled"] == 7
    assert alle["teachers"]["t1"]["transfer_rate"] == pytest.approx(4 / 7)
    assert alle["teachers"]["t1"]["student_recovery"] == pytest.approx(3 / 7)   # 6, 7, 10
    assert alle["teachers"]["t2"]["student_recovery"] == pytest.approx(1 / 2)   # 10
    every = torch.arange(11)
    _assert_rates(alle, _direct(fs[every], {k: v[every] for k, v in fooled.items()}))
    # deterministic models: integer counts, no EOT
    for r in (res, alle):
        assert isinstance(r["student_fooled"], int)
        assert all(isinstance(v[k], int) for v in r["teachers"].values() for k in ("teacher_fooled", "both_fooled"))
    assert res["randomized"] == {"student": False, "teachers": {"t1": False, "t2": False}} and res["eot"] is None
    assert all("eot" not in kw for kw in flag_attack)

    m = transfer_matrix({"s": student, "t1": t1}, x, y, eps=0.0, n=None)
    assert m["index"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 11]   # the student is wrong clean on 9, 10
    assert m["matrix"]["s"]["t1"] == pytest.approx(3 / 6)
    assert m["matrix"]["t1"]["s"] == pytest.approx(3 / 5)
    assert m["matrix"]["s"]["s"] == m["matrix"]["t1"]["t1"] == 1.0
    assert m["fooled_self"] == {"s": 6, "t1": 5}

    md = transfer_markdown({"students": {"s": res}, "teacher_matrix": m})
    assert "11 examples all teachers classify correctly (all of them); 2 of them the student gets " \
           "wrong clean, excluded from the rates; of the other 9, 6 fool the student" in md
    assert "Over all 11 examples" in md and "| t1 | 50.00 | 40.00 |" in md


def _pool_models(n: int):
    """Teachers right clean exactly on the examples i % 3 != 0; a student right everywhere."""
    wrong = torch.tensor([1 if i % 3 == 0 else 0 for i in range(n)])
    t = _Fixed(wrong, torch.ones(n, dtype=torch.long))
    student = _Fixed(torch.zeros(n, dtype=torch.long), torch.tensor([i % 2 for i in range(n)]))
    return student, {"a": t, "b": _Fixed(wrong, torch.zeros(n, dtype=torch.long))}, (wrong == 0)


def test_seeded_sampling_of_the_examples(flag_attack):
    n = 300
    x, y = _inputs(n), torch.zeros(n, dtype=torch.long)
    student, teachers, ok = _pool_models(n)
    pool = ok.nonzero().flatten().tolist()
    a = student_transfer(student, teachers, x, y, n=20, seed=0)
    b = student_transfer(student, teachers, x, y, n=20, seed=0)
    c = student_transfer(student, teachers, x, y, n=20, seed=1)
    assert a["index"] == b["index"] and a == b
    assert a["index"] != c["index"]
    assert a["seed"] == 0 and c["seed"] == 1 and a["pool"] == len(pool) == 200
    for r in (a, c):
        idx = r["index"]
        assert len(idx) == len(set(idx)) == 20 == r["examples"] and idx == sorted(idx)
        assert set(idx) <= set(pool)
        assert idx != pool[:20]                               # a random draw, not the first n
        # the counts are those of the sampled examples: the student is fooled on the odd ones
        assert r["student_fooled"] == sum(i % 2 for i in idx)
    m = transfer_matrix(teachers, x, y, n=20, seed=0)
    assert m["index"] == a["index"] and m["seed"] == 0      # same pool, same seed: same examples
    assert transfer_matrix(teachers, x, y, n=20, seed=5)["index"] != m["index"]
    assert "(seeded sample of 200, seed 0)" in transfer_markdown({"students": {"s": a}})
    assert student_transfer(student, teachers, x, y, n=1000, seed=3)["index"] == pool   # n > pool: all
    with pytest.raises(DarhtError):
        student_transfer(student, teachers, x, y, n=0)
    with pytest.raises(DarhtError):
        transfer_matrix(teachers, x, y, draws=0)


def test_randomized_student_counts_are_expected_values(flag_attack):
    # idx:            0  1  2  3  4  5  6  7
    m_clean = [4, 3, 3, 2, 2, 1, 4, 3]     # right clean w.p. m/4: majority on 0, 1, 2, 6, 7 (3: exactly 1/2)
    m_adv = [0, 1, 2, 3, 4, 0, 2, 4]
    x, y = _inputs(8), torch.zeros(8, dtype=torch.long)
    student = _Cycling(m_clean, m_adv)
    t_adv = torch.tensor([1, 1, 0, 0, 1, 1, 0, 1])
    t1 = _Fixed(torch.zeros(8, dtype=torch.long), t_adv)
    res = student_transfer(student, {"t1": t1}, x, y, n=None, draws=20)
    assert res["randomized"] == {"student": True, "teachers": {"t1": False}}
    assert res["student_wrong_clean_index"] == [3, 4, 5]
    assert res["eot"] == 20 and flag_attack[-1]["eot"] == 20          # crafted on the student with EOT
    fs = 1 - torch.tensor(m_adv, dtype=torch.float64) / 4            # P(x' fools the student)
    ft = {"t1": t_adv.double()}
    main = torch.tensor([0, 1, 2, 6, 7])
    _assert_rates(res, _direct(fs[main], {"t1": ft["t1"][main]}))
    _assert_rates(res["all_examples"], _direct(fs, ft))
    for r in (res, res["all_examples"]):
        assert isinstance(r["student_fooled"], float) and 0 <= r["student_fooled"] <= r["examples"]
        v = r["teachers"]["t1"]
        assert isinstance(v["both_fooled"], float) and isinstance(v["teacher_fooled"], int)
        assert 0 <= v["both_fooled"] <= min(r["student_fooled"], v["teacher_fooled"])
    assert res["student_fooled"] == pytest.approx(2.75) and res["all_examples"]["student_fooled"] == pytest.approx(4)
    # an eot set in attack_args wins
    student_transfer(student, {"t1": t1}, x, y, n=None, attack_args={"eot": 3})
    assert flag_attack[-1]["eot"] == 3
    # the matrix with a randomized source: EOT for it only, diagonal 1, expected fooled_self
    flag_attack.clear()
    m = transfer_matrix({"s": student, "t1": t1}, x, y, n=None)
    assert [kw.get("eot") for kw in flag_attack] == [20, None]
    assert m["index"] == [0, 1, 2, 6, 7] and m["eot"] == {"s": 20, "t1": None}
    assert m["fooled_self"]["s"] == pytest.approx(2.75) and m["fooled_self"]["t1"] == 3
    assert m["matrix"]["s"]["s"] == 1.0
    assert m["matrix"]["s"]["t1"] == pytest.approx(1.75 / 2.75)
    assert m["matrix"]["t1"]["s"] == pytest.approx(1.75 / 3)


def test_darht_student_transfer_with_eot(monkeypatch):
    """A real MC-dropout student and a real attack: EOT is used on it, counts are expected values."""
    from darht.attacks.fgsm import fgsm

    seen = []

    def spy(model, x, y, **kw):
        seen.append(kw.get("eot"))
        return fgsm(model, x, y, **kw)

    torch.manual_seed(0)
    student = create_model("darht-student", num_classes=4, in_chans=1, img_size=12, backbone="small-cnn",
                           num_teachers=2).eval()
    t1 = create_model("small-cnn", num_classes=4, in_chans=1, img_size=12).eval()
    t2 = create_model("small-cnn", num_classes=4, in_chans=1, img_size=12).eval()
    x = torch.rand(96, 1, 12, 12)
    with torch.no_grad():
        y = t1(x).argmax(1)                                   # t1 right everywhere by construction
    monkeypatch.setattr(transfer.ATTACKS, "get", lambda name: spy)
    monkeypatch.setattr(transfer.ATTACKS, "meta", lambda name: {"eot": "eot"})
    res = student_transfer(student, {"t1": t1, "t2": t2}, x, y, attack="fgsm", eps=0.1, n=16, draws=8, seed=2)
    assert res["randomized"]["student"] is True and set(seen) == {20}
    assert res["examples"] + res["student_wrong_clean"] == len(res["index"]) <= 16
    for r in (res, res["all_examples"]):
        assert isinstance(r["student_fooled"], float) and 0 <= r["student_fooled"] <= r["examples"]
        for v in r["teachers"].values():
            assert isinstance(v["teacher_fooled"], int) and 0 <= v["teacher_fooled"] <= r["examples"]
            assert 0 <= v["both_fooled"] <= min(r["student_fooled"], v["teacher_fooled"]) + 1e-9
            if r["student_fooled"]:
                assert v["transfer_rate"] == pytest.approx(v["both_fooled"] / r["student_fooled"])
