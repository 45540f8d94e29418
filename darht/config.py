"""Typed run configuration: YAML files + `--set key=value` overrides -> dataclasses.

One `TrainConfig` describes a training run: teachers (adversarial training) and students
(distillation) alike; the method decides what the fields under `method_args` mean.
The resolved config is written next to the results and into every checkpoint.

Every value is converted to and checked against its field's type (`coerce`) and the range in
`CONSTRAINTS` once, when the config is built, so a typo fails before any data or model is
loaded; each problem is a DarhtError of one line naming the key (e.g. `optim.milestones[1]`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from darht.errors import DarhtError

Amp = Literal["none", "bf16", "fp16"]
Schedule = Literal["multistep", "cosine", "warmup-multistep", "constant", "original"]


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    root: str | None = None          # searched per data set when None
    val_fraction: float = 0.1        # held-out split of train, for checkpoint selection
    augment: bool = True             # random crop (+padding) and horizontal flip
    padding: int = 4
    flip: bool = True
    limit: int | None = None         # use only the first N training examples (quick runs)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: str = "small-cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None       # start from these weights (a checkpoint path)


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    schedule: Schedule = "multistep"  # "original": the method's own schedule
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs, or epochs if > 1
    gamma: float = 0.1
    warmup_epochs: int = 0
    grad_clip: float | None = None


@dataclass
class EvalConfig:
    """Per-epoch validation on the held-out split: clean + PGD (in fp32, also under AMP).

    A randomized model (a DARHT student in MC mode) is attacked with EOT and judged by the
    verdict rule over `draws` predictions, as in `darht evaluate`."""
    attack: str = "pgd"
    eps: float = 8 / 255
    steps: int = 10
    n: int = 512                     # validation examples used per epoch
    every: int = 1
    eot: int | None = None           # EOT samples per step for a randomized model (None: 20)
    draws: int = 20                  # predictions judging each example of a randomized model


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: str = "standard"
    method_args: dict[str, Any] = field(default_factory=dict)
    teachers: list[str] = field(default_factory=list)         # checkpoint paths / model specs
    teacher_natural: str | None = None                         # MTARD's natural teacher
    teacher_bf16: bool = False
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N | mps
    amp: Amp = "none"                # bf16 runs on CPU too; fp16 is CUDA only
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    out: str = "runs/run"
    progress: bool = True


class _Bad(Exception):
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
            _apply(self, path, value, value)
        except _Bad as e:
            raise DarhtError(e.line(where)) from None


def _apply(bound: Bound, path: str, value: Any, shown: Any) -> None:
    """Raise _Bad if the (converted) `value` breaks `bound`; the message shows `shown`."""
    if isinstance(value, (list, tuple)):
        same = isinstance(shown, (list, tuple)) and len(shown) == len(value)
        for i, v in enumerate(value):
            _apply(bound, f"{path}[{i}]", v, shown[i] if same else v)
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not bound.holds(value):
        raise _Bad(path, f"must be {bound}, got {shown!r}")


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
# each element of a list field. EvalSpec is darht.evaluation.robustness.EvalSpec.
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
    """The constraint on field `key` of dataclass `cls` (the eps rule for any field named eps)."""
    bound = CONSTRAINTS.get(f"{cls.__name__}.{key}")
    return EPS_BOUND if bound is None and key == "eps" else bound


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
        raise _Bad(path, f"must be {want}, got {value!r}")
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
            raise _Bad(path, f"must be {want}, got {value!r}")
    else:
        v = value
    if not math.isfinite(v):
        raise _Bad(path, f"must be a finite number, got {value!r}")
    if integer:
        if not v.is_integer():
            raise _Bad(path, f"must be an integer, got {value!r}")
        return int(v)
    return float(v)


def _bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
        return value.strip().lower() in ("true", "yes")
    raise _Bad(path, f"must be true or false, got {value!r}")


def _union(members: tuple, value: Any, path: str) -> Any:
    if value is None:
        if _NoneType in members or Any in members:
            return None
        raise _Bad(path, "may not be null")
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
        except _Bad:
            if exact:
                raise  # the right kind with a bad inside (e.g. a list element): say where
    raise _Bad(path, f"must be {' or '.join(_describe(m) for m in options)}, got {value!r}")


def _check_eps(path: str, value: Any) -> None:
    """The eps rule for a value of any type: numbers and numeric strings must lie in [0, 1]."""
    v = parse_number(value) if isinstance(value, str) else value
    if isinstance(v, (int, float)) and not isinstance(v, bool) and not EPS_BOUND.holds(v):
        raise _Bad(path, f"must be {EPS_BOUND}, got {value!r}")


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
        raise _Bad(path, "may not be null")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Bad(path, f"must be one of {', '.join(map(str, args))}; got {value!r}")
    if hint is bool:
        return _bool(value, path)
    if hint is int or hint is float:
        return _number(value, path, integer=hint is int)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Bad(path, f"must be a string, got {value!r}")
    base = origin or hint
    if base in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Bad(path, f"must be a list, got {value!r}")
        if base is tuple and args and args[-1] is not Ellipsis:  # tuple[int, str]: one type per place
            if len(value) != len(args):
                raise _Bad(path, f"must be a list of {len(args)}, got {value!r}")
            return [_walk(t, v, f"{path}[{i}]") for i, (t, v) in enumerate(zip(args, value))]
        elem = args[0] if args else Any
        return [_walk(elem, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if base is dict or base is Mapping:
        if not isinstance(value, Mapping):
            raise _Bad(path, f"must be a mapping, got {value!r}")
        key_t, val_t = args if len(args) == 2 else (Any, Any)
        out = {}
        for k, v in value.items():
            if key_t is str and not isinstance(k, str):
                raise _Bad(path, f"has a key that is not a string: {k!r}")
            sub = f"{path}.{k}" if path else str(k)
            out[k] = _walk(val_t, v, sub)
            if k == "eps":
                _check_eps(sub, out[k])
        return out
    if isinstance(base, type):
        if isinstance(value, base):
            return value
        raise _Bad(path, f"must be {_describe(hint)}, got {value!r}")
    return value


def _dataclass(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, Mapping):
        if path:
            raise _Bad(path, f"must be a mapping (a section of key: value), got {raw!r}")
        raise _Bad("", f"the top level must be a mapping (key: value), got {raw!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in raw if k not in names)
    if unknown:
        where = f" in '{path}'" if path else ""
        raise _Bad("", f"unknown key '{unknown[0]}'{where}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else key
        v = _walk(hints[key], value, sub)
        bound = bound_for(cls, key)
        if bound is not None:
            _apply(bound, sub, v, value)
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
    except _Bad as e:
        raise DarhtError(e.line(where)) from None


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    """The dataclass `cls` from the mapping `raw`, every value checked; `prefix` ('evaluation.')
    names where `raw` sits, for the error messages."""
    try:
        return _dataclass(cls, raw, prefix.rstrip("."))
    except _Bad as e:
        raise DarhtError(e.line("config")) from None


# ---- YAML and overrides -----------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.05' -> (['optim', 'lr'], 0.05); the value is read as YAML."""
    if "=" not in text:
        raise DarhtError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    keys = [k.strip() for k in key.strip().split(".")]
    if not all(keys):
        raise DarhtError(f"--set: bad key '{key.strip()}' in '{text}'")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return keys, value


def set_path(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        if node.get(k) is None:  # absent, or a section left empty in YAML (`data:`)
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise DarhtError(f"--set: '{k}' is not a section")
    node[keys[-1]] = value


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DarhtError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise DarhtError(f"config {p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DarhtError(f"config {p}: cannot be read ({e})") from None
    if raw is None:
        raise DarhtError(f"config {p} is empty")
    if not isinstance(raw, dict):
        raise DarhtError(f"config {p}: the top level must be a mapping (key: value), got a {type(raw).__name__}")
    return raw


def make_config(raw: dict | None = None, overrides: list[str] = (), cls: type = TrainConfig) -> Any:
    """`cls` (TrainConfig, PipelineConfig, EvalSpec, ...) from `raw` with `--set` overrides applied,
    every value type- and range-checked. `raw` itself is not modified."""
    if raw is not None and not isinstance(raw, Mapping):
        raise DarhtError(f"config: the top level must be a mapping (key: value), got {raw!r}")
    raw = copy.deepcopy(dict(raw or {}))
    for o in overrides:
        keys, value = parse_override(o)
        set_path(raw, keys, value)
    return _build(cls, raw)


def check_run(cfg: TrainConfig) -> None:
    """What a TrainConfig names in the registries, checked without building anything: the method,
    its method_args (names and types) and the validation attack. Call before loading data."""
    from darht.methods._args import check_method_args
    from darht.registry import ATTACKS, METHODS

    check_method_args(METHODS.get(cfg.method), cfg.method_args)
    ATTACKS.get(cfg.eval.attack)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | Path) -> None:
    from darht.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
