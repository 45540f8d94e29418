"""Checks for a method's keyword arguments (a config's `method_args`), shared by every method.

A method declares its arguments, with their defaults, as keyword-only parameters of `__init__`
and collects anything else in `**unknown`; the signature is then the one list of what it
accepts, and the error for a typo can name it:

    def __init__(self, model, teachers=None, *, eps=8/255, steps=10, **unknown):
        check_args(self, unknown)
        self.eps = number(self, "eps", eps)
        self.steps = number(self, "steps", steps, integer=True)

Every problem raises DarhtError with one line naming the method.

`check_method_args(cls, args)` checks a config's `method_args` against that signature (names, and
types from the annotations or the defaults) without constructing the method, so a trainer can
refuse a typo before it loads data or teachers.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Iterable, Mapping

from darht.errors import DarhtError
from darht.typecheck import coerce, keyword_types

# Parameters of Method.__init__ that are not method arguments.
_NOT_ARGS = {"self", "model", "teachers"}


def _name(method: Any) -> str:
    if isinstance(method, str):
        return method
    cls = method if isinstance(method, type) else type(method)
    return getattr(cls, "name", "") or cls.__name__


def accepted_args(method: Any) -> list[str]:
    """The keyword arguments a method class (or instance) declares in its `__init__`."""
    cls = method if isinstance(method, type) else type(method)
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params
            if p.name not in _NOT_ARGS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_args(method: Any, unknown: Mapping[str, Any], accepted: Iterable[str] | None = None) -> None:
    """DarhtError if `unknown` (the leftover **kwargs) is not empty.

    `method` is a Method instance/class (its name and `__init__` signature are used) or a name,
    in which case `accepted` must be given.
    """
    if not unknown:
        return
    names = sorted(accepted if accepted is not None else accepted_args(method))
    bad = ", ".join(sorted(map(str, unknown)))
    raise DarhtError(f"method '{_name(method)}': unknown argument(s) {bad}; "
                     f"accepted: {', '.join(names) or '(none)'}")


def method_arg_types(method: Any) -> dict[str, Any]:
    """name -> expected type of each keyword argument a method class declares in `__init__`:
    its annotation (`int | str`, `float | None`, ...), or else the type its default implies
    (int, float, bool, str; a None default accepts anything)."""
    cls = method if isinstance(method, type) else type(method)
    types, _ = keyword_types(cls.__init__)
    return {name: types[name] for name in accepted_args(cls)}


def check_method_args(method_cls: Any, args: Mapping[str, Any] | None) -> None:
    """DarhtError (one line naming the method and the argument) unless every entry of `args`
    (a config's method_args) is an argument `method_cls` declares, of the declared type.

    Does not construct the method: value checks that need it (ranges, choices, teachers) stay
    in `__init__`. Numbers may be numeric strings such as "8/255", as `number` accepts them.
    `method_cls` may also be a registered name.
    """
    if isinstance(method_cls, str):
        from darht.registry import METHODS

        method_cls = METHODS.get(method_cls)
    name = _name(method_cls)
    if args is None:
        return
    if not isinstance(args, Mapping):
        raise DarhtError(f"method '{name}': method_args must be a mapping of argument: value, got {args!r}")
    types = method_arg_types(method_cls)
    check_args(method_cls, {k: v for k, v in args.items() if k not in types}, accepted=types)
    for arg, value in args.items():
        coerce(types[arg], value, f"method_args.{arg}", where=f"method '{name}'")


def check_no_teachers(method: Any, teachers: list | None) -> None:
    """Adversarial training trains a model from the labels alone; teachers given to it are a mistake."""
    if teachers:
        raise DarhtError(f"method '{_name(method)}' trains without teachers, but {len(teachers)} "
                         f"were given; use a distillation method (e.g. darht, ard, rslad)")


def _parse_fraction(text: str) -> float:
    # YAML reads `eps: 8/255` as the string "8/255"; accept it, since eps is usually written so.
    num, _, den = text.partition("/")
    return float(num) / float(den) if den else float(num)


def number(method: Any, arg: str, value: Any, *, integer: bool = False, minimum: float | None = 0.0,
           allow_none: bool = False) -> Any:
    """`value` as a float (or int if `integer`), >= `minimum` (None: no bound); DarhtError otherwise.

    Accepts numbers and numeric strings such as "0.031" or "8/255"; refuses booleans.
    """
    where = f"method '{_name(method)}': {arg}"
    if value is None:
        if allow_none:
            return None
        raise DarhtError(f"{where} may not be null")
    if isinstance(value, bool):
        raise DarhtError(f"{where} must be a number, got {value!r}")
    try:
        v = _parse_fraction(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise DarhtError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise DarhtError(f"{where} must be finite, got {value!r}")
    if integer:
        if not v.is_integer():
            raise DarhtError(f"{where} must be an integer, got {value!r}")
        v = int(v)
    if minimum is not None and v < minimum:
        raise DarhtError(f"{where} must be >= {minimum:g}, got {value!r}")
    return v


def choice(method: Any, arg: str, value: Any, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`; DarhtError listing them otherwise."""
    options = list(choices)
    if value not in options:
        raise DarhtError(f"method '{_name(method)}': {arg} must be one of {', '.join(options)}; got {value!r}")
    return value


def flag(method: Any, arg: str, value: Any) -> bool:
    """A boolean argument (YAML/CLI may give true/false as strings)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise DarhtError(f"method '{_name(method)}': {arg} must be true or false, got {value!r}")
