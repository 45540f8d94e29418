"""Frozen teachers for distillation: loading from a checkpoint or model name, and the frozen wrapper.

A teacher spec is one of
  - a checkpoint path: ours (`.safetensors` + `.json`), a run directory, or a `.pt/.pth` state dict;
  - `NAME=PATH`: a checkpoint without our json, built as model NAME, e.g.
    `wrn-70-16=ckpt/Gowal2020Uncovering.pt`; NAME may also be a RobustBench model name
    (`Chen2021LTD_WRN34_20=ckpt/Chen2021LTD_WRN34_20.pt`, see darht.models.robustbench): its
    architecture, key layout and normalization come from the table, for the data set with the
    data's number of classes;
  - in a config, `{robustbench: NAME, path: PATH}`: the same as `NAME=PATH` (`as_spec`);
  - a model name (`small-cnn`, `timm:vit_tiny_patch16_224`): randomly initialised, for tests/benchmarks.
Every model takes [0,1] input at the data's size and adapts it inside (resize, normalization), so a
224-px ViT teacher sits next to a 32-px student unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darht.errors import DarhtError
from darht.models import robustbench
from darht.models.io import load_model
from darht.models.zoo import TIMM_PREFIX, create_model
from darht.registry import MODELS

SPEC_KEYS = ("robustbench", "path")  # a teacher given as a mapping in a config


def as_spec(value: Any, where: str = "teachers") -> str:
    """A config's teacher as the spec string `load_teacher` takes: a string as is, a mapping
    `{robustbench: NAME, path: PATH}` as 'NAME=PATH'. DarhtError (one line, naming `where`) for
    anything else; the name is checked against the table here, before any data is loaded."""
    if isinstance(value, str):
        if not value.strip():
            raise DarhtError(f"config: {where} is an empty teacher spec")
        name, sep, _ = value.partition("=")
        if sep and not Path(value).exists() and not _known_name(name.strip()):
            raise DarhtError(f"config: {where}: {_unknown_name(name.strip())}")  # a typo fails before any data
        return value
    if not isinstance(value, Mapping):
        raise DarhtError(f"config: {where} must be a checkpoint path / model spec or a mapping "
                         f"{{robustbench: NAME, path: PATH}}, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in SPEC_KEYS)
    if unknown:
        raise DarhtError(f"config: unknown key '{unknown[0]}' in {where}; known: {', '.join(SPEC_KEYS)}")
    name, path = value.get("robustbench"), value.get("path")
    if not isinstance(name, str) or not name.strip():
        raise DarhtError(f"config: {where}.robustbench must be a RobustBench model name, got {name!r}")
    name = name.strip()
    if not robustbench.is_known(name):
        try:
            robustbench.lookup(name)  # raises, naming close matches
        except DarhtError as e:
            raise DarhtError(f"config: {where}.robustbench: {e}") from None
    if not isinstance(path, str) or not path.strip():
        raise DarhtError(f"config: {where}.path must be the file with the weights of '{name}' "
                         f"(nothing is downloaded at run time; `darht data fetch-teacher {name} --url URL` "
                         f"fetches them), got {path!r}")
    return f"{name}={path.strip()}"


def _known_name(name: str) -> bool:
    return name.startswith(TIMM_PREFIX) or name in MODELS or robustbench.is_known(name)


def _unknown_name(name: str) -> str:
    near = robustbench.close_matches(name, MODELS.names() + robustbench.names())
    return f"'{name}' is neither a model name nor a RobustBench model" + (
        f"; did you mean {', '.join(near)}?" if near else f"; model names: {', '.join(MODELS.names())}")


class FrozenTeacher(nn.Module):
    """A teacher that never trains: eval mode for good, no parameter grads, inference-mode forward.

    The output is cloned outside inference mode, so it is a normal tensor that autograd graphs may
    use as a constant. There is no gradient w.r.t. the input either: attacks must not target it.
    """

    def __init__(self, model: nn.Module, bf16: bool = False):
        super().__init__()
        self.model = model
        self.bf16 = bool(bf16)
        model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # A trainer's model.train() must not switch a teacher's BN/dropout to training behaviour.
        return super().train(False)

    @property
    def spec(self) -> dict | None:
        return getattr(self.model, "spec", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        amp = torch.autocast(x.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with torch.inference_mode(), amp:
            out = self.model(x)
        return out.float().clone()  # outside inference mode: a normal tensor (constant for autograd)


def load_teacher(spec: str, *, num_classes: int, in_chans: int, img_size: int,
                 bf16: bool = False) -> FrozenTeacher:
    """Load (or build) the teacher described by `spec` and freeze it; checks it fits the data."""
    if not isinstance(spec, str) or not spec.strip():
        raise DarhtError(f"teacher: expected a checkpoint path or model name, got {spec!r}")
    spec = spec.strip()
    try:
        model = _build(spec, num_classes, in_chans, img_size)
    except DarhtError as e:
        raise DarhtError(f"teacher '{spec}': {e}") from None
    _check_fits(spec, model, num_classes, in_chans, img_size)
    return FrozenTeacher(model, bf16=bf16)


def load_attackable(spec: str, *, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    """A teacher as a model attacks can target (transferability): frozen weights and eval mode, but
    differentiable w.r.t. its input, unlike `FrozenTeacher`, which runs under inference mode."""
    return load_teacher(spec, num_classes=num_classes, in_chans=in_chans, img_size=img_size).model.eval()


def _build(spec: str, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    name, sep, path = spec.partition("=")
    name = name.strip()
    if Path(spec).exists():
        return load_model(spec)
    if sep:
        ours = name.startswith(TIMM_PREFIX) or name in MODELS
        if not ours and not robustbench.is_known(name):
            raise DarhtError(_unknown_name(name))
        if not ours:  # the table checks the data's number of classes before the file is read
            entry = robustbench.lookup(name, num_classes=num_classes)
            if in_chans != 3:
                raise DarhtError(f"RobustBench '{name}' takes 3-channel {entry.dataset} images but the "
                                 f"data has {in_chans} channel(s)")
            return robustbench.load(name, path, num_classes=num_classes, img_size=img_size)
        if not Path(path).exists():
            raise DarhtError(f"no such file '{path}'")
        return load_model(path, name=name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    if spec.startswith(TIMM_PREFIX) or spec in MODELS:
        return create_model(spec, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    if robustbench.is_known(spec):
        raise DarhtError(f"RobustBench model '{spec}' needs its weights: give {spec}=PATH.pt (nothing is "
                         f"downloaded at run time; `darht data fetch-teacher {spec} --url URL` fetches them)")
    raise DarhtError("no such file, and not a model name (use a checkpoint path, NAME=PATH, or a model name)")


def _check_fits(spec: str, model: nn.Module, num_classes: int, in_chans: int, img_size: int) -> None:
    mspec = getattr(model, "spec", None) or {}
    k, c, s = mspec.get("num_classes"), mspec.get("in_chans"), mspec.get("img_size")
    if k is None or c is None:  # no spec: ask the model itself with one tiny forward
        try:
            with torch.inference_mode():
                p = next(model.parameters(), None)
                kw = {} if p is None else {"device": p.device, "dtype": p.dtype}
                out = model.eval()(torch.zeros(1, in_chans, img_size, img_size, **kw))
        except RuntimeError as e:
            raise DarhtError(f"teacher '{spec}' does not accept {in_chans}x{img_size}x{img_size} input: {e}")
        k, c = out.shape[-1], in_chans
    if k != num_classes:
        raise DarhtError(f"teacher '{spec}' has {k} classes but the data set has {num_classes}")
    if c != in_chans:
        raise DarhtError(f"teacher '{spec}' takes {c} input channels but the data has {in_chans}")
    if s is not None and s != img_size:
        warnings.warn(f"teacher '{spec}' was built for {s}px images; the data is {img_size}px "
                      "(its input adapter resizes)", stacklevel=3)
