"""Typed run configuration: YAML files + `--set key=value` overrides -> dataclasses.

One `TrainConfig` describes a training run: teachers (adversarial training) and students
(distillation) alike; the method decides what the fields under `method_args` mean.
The resolved config is written next to the results and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from darht.errors import DarhtError


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
    schedule: str = "multistep"      # multistep | cosine | warmup-multistep | constant | original (the method's own)
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
    amp: str = "none"                # none | bf16 (CPU too) | fp16 (CUDA only)
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    out: str = "runs/run"
    progress: bool = True


def _check_value(path: str, value: Any) -> None:
    if path.endswith("eps") and isinstance(value, (int, float)) and value < 0:
        raise DarhtError(f"config: {path} must be >= 0, got {value}")


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    if not isinstance(raw, dict):
        raise DarhtError(f"config: '{prefix or 'top level'}' must be a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f" in '{prefix.rstrip('.')}'" if prefix else ""
        raise DarhtError(f"config: unknown key '{unknown[0]}'{where}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(f"{prefix}{key}", hint, value)
            _check_value(f"{prefix}{key}", kwargs[key])
    return cls(**kwargs)


def _coerce(path: str, hint: Any, value: Any) -> Any:
    text = str(hint)
    if value is None:
        if "None" in text or "Any" in text:
            return None
        raise DarhtError(f"config: {path} may not be null")
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1"):
                    return True
                if value.lower() in ("false", "no", "0"):
                    return False
                raise ValueError
            return bool(value)
        if hint is int or text.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float or text.startswith("float"):
            return float(value)
        if hint is str or text.startswith("str"):
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if text.startswith("list") and not isinstance(value, list):
            raise ValueError
        if text.startswith("dict") and not isinstance(value, dict):
            raise ValueError
    except (TypeError, ValueError):
        raise DarhtError(f"config: {path} has the wrong type ({value!r}; expected {text})") from None
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.05' -> (['optim', 'lr'], 0.05); the value is read as YAML."""
    if "=" not in text:
        raise DarhtError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def set_path(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise DarhtError(f"--set: '{k}' is not a section")
    node[keys[-1]] = value


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DarhtError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise DarhtError(f"config {p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise DarhtError(f"config {p}: the top level must be a mapping")
    return raw


def make_config(raw: dict | None = None, overrides: list[str] = (), cls: type = TrainConfig) -> Any:
    raw = dict(raw or {})
    for o in overrides:
        keys, value = parse_override(o)
        set_path(raw, keys, value)
    return _build(cls, raw)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | Path) -> None:
    from darht.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
