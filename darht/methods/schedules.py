"""Piecewise-constant schedules over a run: FAT's dynamic tau and the original papers' lr steps.

Both are written in the epochs of the original paper's run and, by default, stretched to the
length of the actual run, so a 12-epoch run keeps the shape of a 120-epoch one.

Tau schedule: `StepSchedule(((u_1, v_1), ..., (u_n, v_n)))` gives value v_k while the 1-based
epoch e satisfies e <= u_k (and v_k is the first such), as the originals' `adjust_tau(epoch + 1)`
does; after u_n the last value holds. With `scale=True` the boundaries are positions in a run of
length u_n (the original's epochs, or 1.0 if written as fractions) and become u_k * epochs / u_n;
with `scale=False` they are absolute epochs.

`original_schedule` (a class attribute of every teacher-training method) is a dict:
    epochs        int        length of the original run
    lr            float      base learning rate (SGD)
    momentum, weight_decay, batch_size
    milestones    list[int]  0-based epoch indices (as passed to Method.start_epoch) from which
                             lr = base lr * the matching factor; an original that counts epochs
                             from 1 and decays `if epoch >= 60` has milestone 59
    lr_factors    list[float] multipliers of the BASE lr, one per milestone (not cumulative:
                             FAT's 0.1, 0.01, 0.005 mean lr 0.01, 0.001, 0.0005)
    source        str        where the numbers come from
`lr_factor(schedule, epoch, epochs)` evaluates it, scaling the milestones by epochs / schedule's epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from darht.errors import DarhtError

# FAT (Zhang et al. 2020), 120 epochs: tau 0 for epochs 1-50, 1 for 51-90, 2 after.
FAT_TAU: tuple[tuple[int, int], ...] = ((50, 0), (90, 1), (120, 2))
# FAT for TRADES, 85 epochs: 0 (<= 30), 1 (<= 50), 2 (<= 70), 3 after.
FAT_TRADES_TAU: tuple[tuple[int, int], ...] = ((30, 0), (50, 1), (70, 2), (85, 3))


def _exact(v: float) -> Fraction:
    # Through str so a boundary written 0.7 compares as 7/10, not as its binary approximation.
    return Fraction(str(v))


@dataclass(frozen=True)
class StepSchedule:
    """Piecewise-constant integer schedule; see the module docstring for the meaning of `points`."""

    points: tuple[tuple[float, int], ...]
    scale: bool = True

    def __post_init__(self) -> None:
        if not self.points:
            raise DarhtError("schedule: needs at least one (until_epoch, value) pair")
        bounds = [u for u, _ in self.points]
        if any(u <= 0 for u in bounds) or any(b >= a for a, b in zip(bounds[1:], bounds)):
            raise DarhtError(f"schedule: boundaries must be positive and increasing, got {bounds}")

    def __call__(self, epoch: int, epochs: int) -> int:
        """The value for 0-based `epoch` of a run of `epochs` epochs."""
        e = epoch + 1  # the originals count epochs from 1
        last = _exact(self.points[-1][0])
        for until, value in self.points:
            bound = _exact(until) * epochs / last if self.scale else _exact(until)
            if e <= bound:
                return value
        return self.points[-1][1]


def parse_step_schedule(method: str, arg: str, value: Any, default: tuple, scale: bool = True) -> StepSchedule:
    """A schedule from a config value: "dynamic" (the paper's `default`) or [[until, value], ...]."""
    if value == "dynamic":
        return StepSchedule(tuple(default), scale)
    where = f"method '{method}': {arg}"
    if not isinstance(value, (list, tuple)) or not value:
        raise DarhtError(f"{where} must be 'dynamic' or a list of [until_epoch, tau] pairs, got {value!r}")
    points = []
    for pair in value:
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and not any(isinstance(p, bool) for p in pair)
        if not ok or not isinstance(pair[0], (int, float)) or not isinstance(pair[1], int) or pair[1] < 0:
            raise DarhtError(f"{where}: each entry must be [until_epoch, tau] with an integer tau >= 0, got {pair!r}")
        points.append((pair[0], pair[1]))
    try:
        return StepSchedule(tuple(points), scale)
    except DarhtError as e:
        raise DarhtError(f"{where}: {e}") from None


def lr_factor(schedule: dict, epoch: int, epochs: int, scale: bool = True) -> float:
    """The multiplier of the base lr at 0-based `epoch` under an `original_schedule` dict.

    With `scale`, milestone m of the original's T epochs applies from epoch m * epochs / T.
    """
    total = schedule["epochs"]
    factor = 1.0
    for m, f in zip(schedule["milestones"], schedule["lr_factors"]):
        reached = epoch * total >= m * epochs if scale else epoch >= m  # integers: exact
        if reached:
            factor = f
    return factor
