"""Build models by name: `create_model`, `list_models`, `is_randomized`; `unwrap`.

A builder registered in `darht.registry.MODELS` is called as
`builder(num_classes, in_chans=..., img_size=..., **kwargs)` and returns an nn.Module that takes
[0,1] NCHW input and has `num_features`, `forward_features`, `forward_head`. `create_model`
attaches `model.spec` (unless the builder already set one, as the DARHT student does), so
`create_model(**model.spec)` rebuilds the architecture and `save_model` can record it.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from torch import nn

from darht.errors import DarhtError
from darht.models.timm_models import build_timm
from darht.registry import MODELS

TIMM_PREFIX = "timm:"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP/DataParallel (`.module`) and torch.compile (`._orig_mod`)
    wrappers: what is saved (keys without a wrapper prefix)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif "_orig_mod" in model._modules:
            model = model._modules["_orig_mod"]
        else:
            return model


def _positive_int(what: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DarhtError(f"{what} must be a positive integer, got {v!r}")
    return v


def create_model(name: str, num_classes: int, in_chans: int = 3, img_size: int = 32,
                 **kwargs: Any) -> nn.Module:
    """A new model with random weights; `pretrained_file=PATH` loads local weights into it
    (a classifier of another size is left freshly initialised; see darht.models.io).

    `kwargs=` (a dict) is merged into the keyword arguments, so `create_model(**model.spec)` works.
    """
    if not isinstance(name, str) or not name:
        raise DarhtError(f"model name must be a non-empty string, got {name!r}")
    num_classes = _positive_int("num_classes", num_classes)
    in_chans = _positive_int("in_chans", in_chans)
    img_size = _positive_int("img_size", img_size)
    nested = kwargs.pop("kwargs", None)  # create_model(**model.spec) passes the spec's kwargs as one dict
    if nested is not None:
        if not isinstance(nested, dict):
            raise DarhtError(f"model kwargs must be a mapping, got {nested!r}")
        kwargs = {**nested, **kwargs}
    pretrained_file = kwargs.pop("pretrained_file", None)
    spec_kwargs = copy.deepcopy(kwargs)  # builders may consume/mutate their kwargs

    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX):]
        model = build_timm(timm_name, num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    else:
        builder = MODELS.get(name)
        try:
            inspect.signature(builder).bind(num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
        except TypeError as e:
            raise DarhtError(f"model '{name}': {e}") from None
        model = builder(num_classes, in_chans=in_chans, img_size=img_size, **kwargs)

    if not getattr(model, "spec", None):
        model.spec = {"name": name, "num_classes": num_classes, "in_chans": in_chans, "img_size": img_size,
                      "kwargs": spec_kwargs}
    if pretrained_file is not None:
        from darht.models.io import load_pretrained  # io builds models through this module

        load_pretrained(model, pretrained_file)
    return model


def list_models() -> list[str]:
    """Registered model names (any timm model is also available as `timm:<name>`)."""
    return MODELS.names()


def is_randomized(model: nn.Module) -> bool:
    """True if the model or any submodule says `randomized = True` (evaluate it with EOT)."""
    return any(getattr(m, "randomized", False) is True for m in model.modules())
