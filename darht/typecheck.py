"""Checking values against types and ranges: the one type walker behind configs, method
arguments and attack arguments.

`coerce(hint, value, path)` converts and checks a value against a type hint (int, float, bool,
str, X | None, list[X], dict[str, X], Literal[...], a dataclass, Any); `CONSTRAINTS` holds the
value ranges of the config dataclasses' fields; `keyword_types(fn)` reads what a function's
keyword arguments expect, for `method_args` and `attack_args`. Every problem is a DarhtError of
one line naming the key (e.g. `optim.milestones[1]`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from darht.constraints import EPS_BOUND, apply_bound, BadValue, bound_for
from darht.errors import DarhtError


# ---- the type walker -------------------------------------------------------------------------
_NoneType = type(None)
_UNIONS = (Union, types.UnionType)


def parse_number(text: str) -> float | None:
    """A numeric string ('0.1', '5e-4', '8/255') as a float; None if it is not one.

    YAML 1.1 reads `5e-4` and `8/255` as strings, so numbers are accepted in these forms."""
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    num, sep, den = s.partition("/")
    if not sep:
        return None
    try:
        return float(num) / float(den)
    except (ValueError, ZeroDivisionError):
        return None


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    base = origin or hint
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "a mapping"}
    if base in names:
        return names[base]
    if dataclasses.is_dataclass(base):
        return "a mapping"
    return f"a {getattr(base, '__name__', str(base))}"


def _matches(hint: Any, value: Any) -> bool:
    """Whether `value` already has the kind `hint` names (to pick a member of a union)."""
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(hint))
    base = origin or hint
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base in (list, tuple):
        return isinstance(value, (list, tuple))
    if base is dict or dataclasses.is_dataclass(base):
        return isinstance(value, Mapping)
    return isinstance(base, type) and isinstance(value, base)


def _number(value: Any, path: str, integer: bool) -> int | float:
    want = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadValue(path, f"must be {want}, got {value!r}")
    if isinstance(value, int):
        return value if integer else float(value)
    if isinstance(value, str):
        if integer:
            try:
                return int(value.strip())
            except ValueError:
                pass
        v = parse_number(value)
        if v is None:
            raise BadValue(path, f"must be {want}, got {value!r}")
    else:
        v = value
    if not math.isfinite(v):
        raise BadValue(path, f"must be a finite number, got {value!r}")
    if integer:
        if not v.is_integer():
            raise BadValue(path, f"must be an integer, got {value!r}")
        return int(v)
    return float(v)


def _bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
        return value.strip().lower() in ("true", "yes")
    raise BadValue(path, f"must be true or false, got {value!r}")


def _union(members: tuple, value: Any, path: str) -> Any:
    if value is None:
        if _NoneType in members or Any in members:
            return None
        raise BadValue(path, "may not be null")
    options = [m for m in members if m is not _NoneType]
    if len(options) == 1:
        return _walk(options[0], value, path)
    # a member the value already is comes first: "dynamic" stays a str and 3 an int for `int | str`;
    # then conversions, but not a number to a string (3 is no `str | list`)
    for m in sorted(options, key=lambda m: not _matches(m, value)):
        exact = _matches(m, value)
        if not exact and m is str:
            continue
        try:
            return _walk(m, value, path)
        except BadValue:
            if exact:
                raise  # the right kind with a bad inside (e.g. a list element): say where
    raise BadValue(path, f"must be {' or '.join(_describe(m) for m in options)}, got {value!r}")


def _check_eps(path: str, value: Any) -> None:
    """The eps rule for a value of any type: numbers and numeric strings must lie in [0, 1]."""
    v = parse_number(value) if isinstance(value, str) else value
    if isinstance(v, (int, float)) and not isinstance(v, bool) and not EPS_BOUND.holds(v):
        raise BadValue(path, f"must be {EPS_BOUND}, got {value!r}")


def _scan(value: Any, path: str) -> None:
    """Apply the eps rule inside a free-form value (a `dict[str, Any]` entry)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if k == "eps":
                _check_eps(sub, v)
            _scan(v, sub)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _scan(v, f"{path}[{i}]")


def _walk(hint: Any, value: Any, path: str) -> Any:
    if hint is Any or hint is object:
        _scan(value, path)
        return value
    if isinstance(hint, str):  # an annotation that could not be resolved: nothing to check
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _dataclass(hint, {} if value is None else value, path)
    origin, args = get_origin(hint), get_args(hint)
    if origin in _UNIONS:
        return _union(args, value, path)
    if value is None:
        if hint is _NoneType:
            return None
        raise BadValue(path, "may not be null")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise BadValue(path, f"must be one of {', '.join(map(str, args))}; got {value!r}")
    if hint is bool:
        return _bool(value, path)
    if hint is int or hint is float:
        return _number(value, path, integer=hint is int)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise BadValue(path, f"must be a string, got {value!r}")
    base = origin or hint
    if base in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise BadValue(path, f"must be a list, got {value!r}")
        if base is tuple and args and args[-1] is not Ellipsis:  # tuple[int, str]: one type per place
            if len(value) != len(args):
                raise BadValue(path, f"must be a list of {len(args)}, got {value!r}")
            return [_walk(t, v, f"{path}[{i}]") for i, (t, v) in enumerate(zip(args, value))]
        elem = args[0] if args else Any
        return [_walk(elem, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if base is dict or base is Mapping:
        if not isinstance(value, Mapping):
            raise BadValue(path, f"must be a mapping, got {value!r}")
        key_t, val_t = args if len(args) == 2 else (Any, Any)
        out = {}
        for k, v in value.items():
            if key_t is str and not isinstance(k, str):
                raise BadValue(path, f"has a key that is not a string: {k!r}")
            sub = f"{path}.{k}" if path else str(k)
            out[k] = _walk(val_t, v, sub)
            if k == "eps":
                _check_eps(sub, out[k])
        return out
    if isinstance(base, type):
        if isinstance(value, base):
            return value
        raise BadValue(path, f"must be {_describe(hint)}, got {value!r}")
    return value


def _dataclass(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, Mapping):
        if path:
            raise BadValue(path, f"must be a mapping (a section of key: value), got {raw!r}")
        raise BadValue("", f"the top level must be a mapping (key: value), got {raw!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in raw if k not in names)
    if unknown:
        where = f" in '{path}'" if path else ""
        raise BadValue("", f"unknown key '{unknown[0]}'{where}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else key
        v = _walk(hints[key], value, sub)
        bound = bound_for(cls, key)
        if bound is not None:
            apply_bound(bound, sub, v, value)
        kwargs[key] = v
    return cls(**kwargs)


def coerce(hint: Any, value: Any, path: str, where: str = "config") -> Any:
    """`value` checked against and converted to the type `hint` (int, float, bool, str, X | None,
    list[X], dict[str, X], Literal[...], a dataclass, Any); DarhtError '<where>: <path> ...' else.

    Numbers may be numeric strings ('5e-4', '8/255'); an int must be integral and no bool; a bool
    is a real boolean or 'true'/'false'/'yes'/'no'. Entries named eps, anywhere, must be in [0, 1].
    """
    try:
        return _walk(hint, value, path)
    except BadValue as e:
        raise DarhtError(e.line(where)) from None


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    """The dataclass `cls` from the mapping `raw`, every value checked; `prefix` ('evaluation.')
    names where `raw` sits, for the error messages."""
    try:
        return _dataclass(cls, raw, prefix.rstrip("."))
    except BadValue as e:
        raise DarhtError(e.line("config")) from None


# ---- keyword arguments of a function ----------------------------------------------------------
def _type_of_default(default: Any) -> Any:
    """The type a default implies: bool, int, float or str; anything for None or no default."""
    if isinstance(default, bool):
        return bool
    if type(default) in (int, float, str):
        return type(default)
    return Any


def keyword_types(fn: Any, skip: tuple[str, ...] = ()) -> tuple[dict[str, Any], bool]:
    """(name -> expected type of each keyword argument of `fn`, whether it takes **kwargs).

    The type is the annotation (`int | str`, `float | None`, ...), or else the type the default
    implies (int, float, bool, str; a None default accepts anything). `skip`: names left out.
    """
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: fall back on the defaults
        hints = {}
    out: dict[str, Any] = {}
    var_kw = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is not p.VAR_POSITIONAL and p.name not in skip:
            out[p.name] = hints.get(p.name, _type_of_default(p.default))
    return out, var_kw
