"""A method's arguments (a config's `method_args`): declared once, checked in one place.

Each method declares its arguments as a frozen dataclass `Args`, with the defaults of
../shared/SPEC-methods.md and, per field, a value range:

    @dataclass(frozen=True)
    class Args:
        eps: float = 8 / 255                    # every field named eps is in [0, 1]
        steps: int = arg(10, at_least(0))
        beta: float = arg(6.0, at_least(0))

        def __post_init__(self):                # checks that need several fields
            if ...: raise ArgError("give either a fixed tau or a tau_schedule, not both")

`parse_method_args(cls, raw)` turns a mapping into `cls.Args` through the config's type walker
(darht.typecheck): numbers may be numeric strings such as "8/255", an int must be integral,
unknown names are refused with the list of accepted ones. `Method.__init__` calls it, and
`check_method_args` lets a trainer refuse a typo before it loads data or teachers. Every problem
is a DarhtError of one line naming the method.

Schedules that are method arguments live here too: `StepSchedule` (FAT's tau over the run) and
the published ones (`FAT_TAU`, `FAT_TRADES_TAU`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping

from darht.constraints import Bound, at_least
from darht.errors import DarhtError
from darht.registry import METHODS
from darht.typecheck import coerce


class ArgError(DarhtError):
    """A bad value found by an `Args.__post_init__` (or a schedule parser); `parse_method_args`
    prefixes it with the method's name."""


def arg(default: Any, bound: Bound | None = None) -> Any:
    """A dataclass field with a default and an optional value range (checked on given values)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"bound": bound})
    return field(default=default, metadata={"bound": bound})


@dataclass(frozen=True)
class NoArgs:
    """The arguments of a method that takes none."""


def _name(method: Any) -> str:
    if isinstance(method, str):
        return method
    cls = method if isinstance(method, type) else type(method)
    return getattr(cls, "name", "") or cls.__name__


def _args_class(method: Any) -> type:
    if isinstance(method, str):
        method = METHODS.get(method)
    cls = method if isinstance(method, type) else type(method)
    if dataclasses.is_dataclass(cls):  # already an Args class
        return cls
    return getattr(cls, "Args", NoArgs)


def accepted_args(method: Any) -> list[str]:
    """The argument names a method (class, instance or registered name) declares in its Args."""
    return [f.name for f in dataclasses.fields(_args_class(method)) if f.init]


def arg_defaults(method: Any) -> dict[str, Any]:
    """name -> default of each declared argument."""
    return {k: v for k, v in dataclasses.asdict(_args_class(method)()).items()}


def parse_method_args(method: Any, raw: Mapping[str, Any] | None) -> Any:
    """`raw` (a config's method_args) as the method's `Args`; DarhtError naming the method and
    the argument otherwise. `method` is a Method class, instance or registered name."""
    name, args_cls = _name(method), _args_class(method)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise DarhtError(f"method '{name}': method_args must be a mapping of argument: value, got {raw!r}")
    accepted = accepted_args(args_cls)
    unknown = sorted(str(k) for k in raw if k not in accepted)
    if unknown:
        raise DarhtError(f"method '{name}': unknown argument(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(sorted(accepted)) or '(none)'}")
    try:
        return coerce(args_cls, dict(raw), "method_args", where=f"method '{name}'")
    except ArgError as e:
        raise DarhtError(f"method '{name}': {e}") from None


def check_method_args(method: Any, raw: Mapping[str, Any] | None) -> None:
    """Check a config's method_args without constructing the method (see parse_method_args)."""
    parse_method_args(method, raw)


# ---- the inner attack's arguments, shared by the methods that have one -------------------------
@dataclass(frozen=True)
class StepSizeArgs:
    """PGDArgs under ARD's names: its `alpha` is the KD weight, so the attack's step is `step_size`
    (ARD, and the methods built on its code: AdaAD, IAD)."""

    eps: float = 8 / 255
    step_size: float = arg(2 / 255, at_least(0))
    steps: int = arg(10, at_least(0))


@dataclass(frozen=True)
class PGDArgs:
    """eps, step size and steps of an inner PGD, at Madry et al.'s CIFAR settings (8/255, 2/255, 10)."""

    eps: float = 8 / 255
    alpha: float = arg(2 / 255, at_least(0))  # the attack's step size
    steps: int = arg(10, at_least(0))


@dataclass(frozen=True)
class TradesPGDArgs(PGDArgs):
    """The same at TRADES' and FAT's released settings (eps 0.031, step 0.007, 10 steps)."""

    eps: float = 0.031
    alpha: float = arg(0.007, at_least(0))


# ---- schedules given as arguments -------------------------------------------------------------
# FAT (Zhang et al. 2020), 120 epochs: tau 0 for epochs 1-50, 1 for 51-90, 2 after.
FAT_TAU: tuple[tuple[int, int], ...] = ((50, 0), (90, 1), (120, 2))
# FAT for TRADES, 85 epochs: 0 (<= 30), 1 (<= 50), 2 (<= 70), 3 after.
FAT_TRADES_TAU: tuple[tuple[int, int], ...] = ((30, 0), (50, 1), (70, 2), (85, 3))


def _exact(v: float) -> Fraction:
    # Through str so a boundary written 0.7 compares as 7/10, not as its binary approximation.
    return Fraction(str(v))


@dataclass(frozen=True)
class StepSchedule:
    """A piecewise-constant integer schedule over a run, written in the original paper's epochs.

    `StepSchedule(((u_1, v_1), ..., (u_n, v_n)))` gives value v_k while the 1-based epoch e
    satisfies e <= u_k (and v_k is the first such), as the originals' `adjust_tau(epoch + 1)`
    does; after u_n the last value holds. With `scale=True` the boundaries are positions in a run
    of length u_n (the original's epochs, or 1.0 if written as fractions) and become
    u_k * epochs / u_n, so a 12-epoch run keeps the shape of a 120-epoch one; with `scale=False`
    they are absolute epochs.
    """

    points: tuple[tuple[float, int], ...]
    scale: bool = True

    def __post_init__(self) -> None:
        if not self.points:
            raise ArgError("schedule: needs at least one (until_epoch, value) pair")
        bounds = [u for u, _ in self.points]
        if any(u <= 0 for u in bounds) or any(b >= a for a, b in zip(bounds[1:], bounds)):
            raise ArgError(f"schedule: boundaries must be positive and increasing, got {bounds}")

    def __call__(self, epoch: int, epochs: int) -> int:
        """The value for 0-based `epoch` of a run of `epochs` epochs."""
        e = epoch + 1  # the originals count epochs from 1
        last = _exact(self.points[-1][0])
        for until, value in self.points:
            bound = _exact(until) * epochs / last if self.scale else _exact(until)
            if e <= bound:
                return value
        return self.points[-1][1]


def parse_step_schedule(arg_name: str, value: Any, default: tuple, scale: bool = True) -> StepSchedule:
    """A schedule from a config value: "dynamic" (the paper's `default`) or [[until, value], ...];
    ArgError naming `arg_name` otherwise."""
    if value == "dynamic":
        return StepSchedule(tuple(default), scale)
    if not isinstance(value, (list, tuple)) or not value:
        raise ArgError(f"{arg_name} must be 'dynamic' or a list of [until_epoch, tau] pairs, got {value!r}")
    points = []
    for pair in value:
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and not any(isinstance(p, bool) for p in pair)
        if not ok or not isinstance(pair[0], (int, float)) or not isinstance(pair[1], int) or pair[1] < 0:
            raise ArgError(f"{arg_name}: each entry must be [until_epoch, tau] with an integer tau >= 0, "
                           f"got {pair!r}")
        points.append((pair[0], pair[1]))
    try:
        return StepSchedule(tuple(points), scale)
    except ArgError as e:
        raise ArgError(f"{arg_name}: {e}") from None
