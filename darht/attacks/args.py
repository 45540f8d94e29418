"""Checks for an attack's keyword arguments (`attack_args`, `--attack-arg ATTACK.KEY=VALUE`),
made before any model or data is loaded.

An attack's signature is the list of what it accepts: its keyword parameters other than the
inputs (model, x, y), tensors (target_probs) and `eps` (the evaluation's radius, passed to every
attack). The pyautoattack adapters take `**kw`; what they accept is `autoattack.TUNABLE`, plus
`n_queries`, their own `seed` and `verbose`, and `eot` where it is their EOT keyword (square).
Types come from the annotations (or the defaults); `RANGES` and `CHOICES` add value checks.
Every problem raises DarhtError with one line naming the attack.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import torch

from darht.attacks import autoattack
from darht.constraints import Bound, at_least
from darht.typecheck import coerce, keyword_types
from darht.errors import DarhtError
from darht.registry import ATTACKS

_INPUTS = ("model", "x", "y")
_STARTS = ("normal", "uniform", "none")  # darht.attacks.core.random_start

# argument name -> its range, for every attack that takes it
RANGES: dict[str, Bound] = {
    "steps": at_least(0),
    "alpha": at_least(0),
    "sigma": at_least(0),
    "omega": at_least(0),
    "tau": at_least(0),
    "eot": at_least(1),
    "eot_iter": at_least(1),
    "n_iter": at_least(1),
    "n_restarts": at_least(1),
    "n_queries": at_least(1),
    "n_target_classes": at_least(1),
    "batch_size": at_least(1),
}

# (attack, argument) -> the values it accepts (see the attack's own checks)
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("pgd", "loss"): ("ce", "cw", "kl"),
    ("pgd", "start"): _STARTS,
    ("fat-pgd", "loss"): ("ce", "kl"),
    ("fat-pgd", "start"): _STARTS,
    ("fosc-pgd", "start"): _STARTS,
}


def _is_tensor(hint: Any) -> bool:
    if hint is torch.Tensor:
        return True
    return any(_is_tensor(a) for a in typing.get_args(hint))


def attack_arg_types(name: str) -> tuple[dict[str, Any], bool]:
    """(argument -> expected type, open) for the registered attack `name`; `open` is True for an
    attack taking `**kw` whose names are not known here (then any other name passes)."""
    fn = ATTACKS.get(name)
    types, var_kw = keyword_types(fn, skip=(*_INPUTS, "eps"))
    out = {k: t for k, t in types.items() if not _is_tensor(t)}
    if not var_kw:
        return out, False
    if getattr(fn, "__module__", None) != autoattack.__name__:
        return out, True
    out.update({k: int for k in autoattack.TUNABLE})
    out["n_queries"] = int
    if ATTACKS.meta(name).get("eot") == "eot":  # square: draws per margin, in the strongest-point mode
        out["eot"] = int
    return out, False


def check_attack_args(name: str, args: Mapping[str, Any] | None) -> None:
    """DarhtError unless every entry of `args` is an argument attack `name` accepts, of its type
    and in its range. Nothing is run or built."""
    types, open_ = attack_arg_types(name)
    if args is None:
        return
    where = f"attack '{name}'"
    if not isinstance(args, Mapping):
        raise DarhtError(f"{where}: its arguments must be a mapping of argument: value, got {args!r}")
    if "eps" in args:
        raise DarhtError(f"{where}: eps is not an attack argument: the evaluation's eps applies to every attack")
    unknown = sorted(str(k) for k in args if k not in types)
    if unknown and not open_:
        s = "s" if len(unknown) > 1 else ""
        raise DarhtError(f"{where}: unknown argument{s} {', '.join(repr(u) for u in unknown)}; "
                         f"accepted: {', '.join(sorted(types)) or '(none)'}")
    for arg, value in args.items():
        if arg not in types:
            continue
        v = coerce(types[arg], value, arg, where=where)
        if arg in RANGES:
            RANGES[arg].check(arg, v, where)
        options = CHOICES.get((name, arg))
        if options is not None and v not in options:
            raise DarhtError(f"{where}: {arg} must be one of {', '.join(options)}; got {value!r}")


def check_attack_args_map(attack_args: Mapping[str, Any] | None, path: str = "attack_args") -> None:
    """`check_attack_args` for every entry of an `attack_args` mapping (attack -> its arguments),
    each key a registered attack; `path` names the mapping in the messages."""
    if attack_args is None:
        return
    if not isinstance(attack_args, Mapping):
        raise DarhtError(f"{path} must be a mapping of attack: {{argument: value}}, got {attack_args!r}")
    for name, args in attack_args.items():
        if name not in ATTACKS:
            raise DarhtError(f"{path}: unknown attack '{name}'; choose from: {', '.join(ATTACKS.names())}")
        if not isinstance(args, Mapping):
            raise DarhtError(f"{path}.{name} must be a mapping of argument: value, got {args!r}")
        check_attack_args(name, args)
