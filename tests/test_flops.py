"""benchmarks/flops.py's per-step split on small models (meta device: nothing is computed).

The attack's count must follow from the method's own settings: DARHT attacks adv_prob of the batch
in expectation with its inner attack's K steps, PGD-AT the whole batch; CAT is counted at its last
lesson (strengths 0..K mixed: K/2 steps per example on average)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import flops  # noqa: E402  (benchmarks/flops.py)

from darht.methods.cat import strength_groups  # noqa: E402
from darht.registry import METHODS  # noqa: E402

SHAPE, CLASSES, B = (3, 16, 16), 10, 32
SMALL = ("small-cnn", {"width": 8})


def _step(method: str, args: dict, teachers: list | None = None) -> dict:
    return flops.step_flops(METHODS.get(method), SMALL[0], dict(SMALL[1]), args, teachers or [], B, SHAPE, CLASSES)


def test_attack_flops_follow_each_methods_attack() -> None:
    unit = flops.attack_pass(_step("standard", {})["model"], B, SHAPE)[0]  # one forward + input backward on B
    assert unit > 0
    pgd_at = _step("pgd-at", {"steps": 4})
    assert pgd_at["flops"]["attack"] == pytest.approx(4 * unit)
    darht = _step("darht", {"steps": 4, "adv_prob": 0.25}, [SMALL, SMALL])
    assert darht["attacked_fraction"] == 0.25
    student_unit = flops.attack_pass(darht["model"], B, SHAPE)[0]  # the darht-student: backbone + head
    assert darht["flops"]["attack"] == pytest.approx(0.25 * 4 * student_unit, rel=1e-6)
    cat = _step("cat", {"steps": 4})
    # 5 groups of 6 or 7 examples attacked with 0..4 steps: about 2 steps per example
    example_steps = sum(k * (hi - lo) for k, lo, hi in strength_groups(B, 4))
    assert example_steps == 66
    assert cat["flops"]["attack"] == pytest.approx(example_steps * unit / B, rel=1e-6)
    assert [c["steps"] for c in cat["attack_calls"]] == [1, 2, 3, 4]
