"""Typed run configuration: YAML files + `--set key=value` overrides -> dataclasses.

One `TrainConfig` describes a training run: teachers (adversarial training) and students
(distillation) alike; the method decides what the fields under `method_args` mean.
The resolved config is written next to the results and into every checkpoint.

Every value is converted to and checked against its field's type and the range in
`CONSTRAINTS` (both in darht.typecheck) once, when the config is built, so a typo fails before any data or model is
loaded; each problem is a DarhtError of one line naming the key (e.g. `optim.milestones[1]`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from darht.errors import DarhtError
from darht.methods.args import check_method_args
from darht.methods.base import teacher_specs
from darht.registry import ATTACKS, METHODS
from darht.typecheck import _build
from darht.utils import atomic_write_text

Amp = Literal["none", "bf16", "fp16"]
CpuMalloc = Literal["retain", "system"]
Schedule = Literal["multistep", "cosine", "warmup-multistep", "constant", "original"]
TeacherSpec = str | dict[str, str]


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    root: str | None = None          # searched per data set when None
    val_fraction: float = 0.1        # held-out split of train, for checkpoint selection
    augment: bool = True             # random crop (+padding) and horizontal flip
    padding: int = 4
    flip: bool = True
    limit: int | None = None         # use only the first N training examples (quick runs)
    stream: bool | None = None       # decode lazily / map a uint8 cache (None: automatic by size)
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
    # checkpoint paths / model specs: a list, or for a method with teacher roles (MTARD: adversarial,
    # natural) a mapping role -> teacher (a list then gives them in the method's role order); a
    # teacher is a spec string or {robustbench: NAME, path: PATH} (darht.models.teachers.as_spec)
    teachers: list[TeacherSpec] | dict[str, TeacherSpec] = field(default_factory=list)
    teacher_bf16: bool = False
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N | mps
    amp: Amp = "none"                # bf16 runs on CPU too; fp16 is CUDA only
    channels_last: bool = False
    compile: bool = False            # the training model and the model the inner attacks call
    cudnn_benchmark: bool = False    # CUDA: let cuDNN pick the fastest kernels (fixed input shapes)
    tf32: bool = False               # CUDA: TF32 matmuls/convolutions (faster, ~1e-3 relative error)
    cpu_malloc: CpuMalloc = "retain"  # CPU: keep freed memory for the next pass (darht.engine.malloc)
    sync_bn: bool = False            # DDP: BatchNorm statistics over the global batch (SyncBatchNorm)
    ddp_bf16_compress: bool = False  # DDP: all-reduce gradients in bf16 (DDP's compression hook)
    workers: int = 0
    out: str = "runs/run"
    progress: bool = True


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
    if cls is TrainConfig and "teacher_natural" in raw:
        raise DarhtError("config: teacher_natural was replaced by teacher roles: write "
                         "teachers: {adversarial: A, natural: B} (or the list [A, B])")
    return _build(cls, raw)


def check_run(cfg: TrainConfig) -> None:
    """What a TrainConfig names in the registries, checked without building anything: the method,
    its method_args (names and types), its teachers (how many, which roles) and the validation
    attack; and every value again, for a config built in Python rather than by `make_config`.
    Call before loading data."""
    _build(type(cfg), to_dict(cfg))
    method = METHODS.get(cfg.method)
    check_method_args(method, cfg.method_args)
    teacher_specs(method, cfg.teachers)
    ATTACKS.get(cfg.eval.attack)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
