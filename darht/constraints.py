"""Value ranges: `Bound`, and `CONSTRAINTS`, the one table of the config dataclasses' ranges
("Class.field" -> Bound; every entry named `eps`, anywhere, is in [0, 1]). A method's `Args`
dataclass declares its ranges on its own fields instead (darht.methods.args.arg).

Used by the type walker (darht.typecheck) when a config is built, and by the attack-argument
checks (darht.attacks.args).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from darht.errors import DarhtError


class BadValue(Exception):
    """A problem at `path`; turned into one DarhtError line by the public entry points."""

    def __init__(self, path: str, problem: str):
        super().__init__(path, problem)
        self.path, self.problem = path, problem

    def line(self, where: str) -> str:
        return f"{where}: {self.path} {self.problem}" if self.path else f"{where}: {self.problem}"


# ---- value constraints ------------------------------------------------------------------------
@dataclass(frozen=True)
class Bound:
    """low <(=) v <(=) high for a number, or for each element of a list; null passes (whether
    null is allowed is the field type's business)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, v: float) -> bool:
        if self.low is not None and not (v > self.low if self.low_open else v >= self.low):
            return False
        if self.high is not None and not (v < self.high if self.high_open else v <= self.high):
            return False
        return True

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, path: str, value: Any, where: str = "config") -> None:
        """DarhtError '<where>: <path> must be <bound>, got <value>' if a number (or an element of
        a list) breaks the bound; other values pass."""
        try:
            apply_bound(self, path, value, value)
        except BadValue as e:
            raise DarhtError(e.line(where)) from None


def apply_bound(bound: Bound, path: str, value: Any, shown: Any) -> None:
    """Raise BadValue if the (converted) `value` breaks `bound`; the message shows `shown`."""
    if isinstance(value, (list, tuple)):
        same = isinstance(shown, (list, tuple)) and len(shown) == len(value)
        for i, v in enumerate(value):
            apply_bound(bound, f"{path}[{i}]", v, shown[i] if same else v)
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not bound.holds(value):
        raise BadValue(path, f"must be {bound}, got {shown!r}")


def at_least(low: float) -> Bound:
    return Bound(low)


def above(low: float) -> Bound:
    return Bound(low, low_open=True)


def between(low: float, high: float, high_open: bool = False) -> Bound:
    return Bound(low, high, high_open=high_open)


# Every field or mapping entry named `eps`, wherever it is (a section, method_args, attack_args,
# a pipeline stage): a L-inf radius in [0, 1] pixel space.
EPS_BOUND = between(0, 1)

# "Class.field" -> its bound; applied to the values a config gives (defaults are trusted), to
# each element of a list field. EvalSpec is darht.evaluation.spec.EvalSpec.
CONSTRAINTS: dict[str, Bound] = {
    "TrainConfig.epochs": at_least(1),
    "TrainConfig.batch_size": at_least(1),
    "TrainConfig.workers": at_least(0),
    "OptimConfig.lr": above(0),
    "OptimConfig.momentum": between(0, 1, high_open=True),
    "OptimConfig.weight_decay": at_least(0),
    "OptimConfig.gamma": above(0),
    "OptimConfig.warmup_epochs": at_least(0),
    "OptimConfig.grad_clip": above(0),
    "OptimConfig.milestones": above(0),
    "DataConfig.val_fraction": between(0, 1, high_open=True),
    "DataConfig.padding": at_least(0),
    "DataConfig.limit": at_least(1),
    "EvalConfig.n": at_least(1),
    "EvalConfig.steps": at_least(0),
    "EvalConfig.every": at_least(1),
    "EvalConfig.eot": at_least(1),
    "EvalConfig.draws": at_least(1),
    "EvalSpec.n": at_least(1),
    "EvalSpec.pool": at_least(1),
    "EvalSpec.trials": at_least(1),
    "EvalSpec.batch_size": at_least(1),
    "EvalSpec.eot": at_least(1),
    "EvalSpec.draws": at_least(1),
    "EvalSpec.eot_sweep": at_least(1),
}


def bound_for(cls: type, key: str) -> Bound | None:
    """The constraint on field `key` of dataclass `cls`: the field's own (`metadata["bound"]`, as a
    method's Args declares it), else CONSTRAINTS' entry, else the eps rule for a field named eps."""
    f = getattr(cls, "__dataclass_fields__", {}).get(key)
    bound = f.metadata.get("bound") if f is not None else None
    bound = bound or CONSTRAINTS.get(f"{cls.__name__}.{key}")
    return EPS_BOUND if bound is None and key == "eps" else bound
