"""Input handling that lives inside every model: normalization, resizing, channel repetition.

Every darht model takes float images in [0, 1], NCHW. Anything a network needs beyond that
(its mean/std, a 224 px input, 3 channels) is done here, inside the model, so attacks and eps
stay in [0, 1] pixel space and the data pipeline never normalizes.

- `NormalizedNet`: base of the in-house networks. `mean`/`std` buffers of shape [C, 1, 1] at
  the top level (the layout of RobustBench's DeepMind WRNs), identity unless the caller passes
  mean/std; subclasses give `features(normalized x) -> [N, F]` and a `classifier_head` module.
- `InputAdapter`: wraps a timm-style network (forward_features / forward_head(pre_logits) /
  get_classifier) and does resize -> 1-to-3 channel repeat -> normalize before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from darht.errors import DarhtError


def channel_stats(mean: float | Sequence[float] | None, std: float | Sequence[float] | None,
                  chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as float tensors [chans, 1, 1]; None means identity (0 and 1)."""

    def expand(v: float | Sequence[float] | None, default: float, what: str) -> list[float]:
        if v is None:
            vals = [default] * chans
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [float(v)] * chans
        else:
            try:
                vals = [float(a) for a in v]
            except (TypeError, ValueError):
                raise DarhtError(f"{what} must be a number or a list of numbers, got {v!r}") from None
            if len(vals) == 1:
                vals = vals * chans
            if len(vals) != chans:
                raise DarhtError(f"{what} has {len(vals)} values but the model has {chans} input channels")
        return vals

    m, s = expand(mean, 0.0, "mean"), expand(std, 1.0, "std")
    if not all(v > 0 for v in s):  # checked on python floats: models may be built on the meta device
        raise DarhtError(f"std must be > 0, got {s}")
    return (torch.tensor(m, dtype=torch.float32).view(chans, 1, 1),
            torch.tensor(s, dtype=torch.float32).view(chans, 1, 1))


class NormalizedNet(nn.Module):
    """An in-house network: normalize -> features [N, num_features] -> classifier_head -> logits."""

    num_features: int

    def __init__(self, in_chans: int, mean: float | Sequence[float] | None = None,
                 std: float | Sequence[float] | None = None):
        super().__init__()
        m, s = channel_stats(mean, std, in_chans)
        self.register_buffer("mean", m)
        self.register_buffer("std", s)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized input -> pooled penultimate features [N, num_features]."""
        raise NotImplementedError

    @property
    def classifier_head(self) -> nn.Module:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier_head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class InputAdapter(nn.Module):
    """[0,1] input of `in_chans` channels -> what a timm-style `model` wants, inside the graph.

    `input_size` (H, W) or None: bilinear resize (antialias off, so the map is linear and cheap to
    differentiate through; attacks see the same function as evaluation). `mean`/`std` are the
    inner model's, over its `model_chans` channels; a 1-channel input is repeated when the inner
    model wants 3 channels.
    """

    def __init__(self, model: nn.Module, *, in_chans: int, model_chans: int,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 input_size: tuple[int, int] | None = None):
        super().__init__()
        if in_chans != model_chans and not (in_chans == 1 and model_chans == 3):
            raise DarhtError(f"cannot feed {in_chans}-channel images to a model that wants {model_chans} "
                             "channels (only 1 -> 3 is adapted)")
        self.model = model
        self.in_chans = in_chans
        self.model_chans = model_chans
        self.input_size = tuple(int(s) for s in input_size) if input_size is not None else None
        m, s = channel_stats(mean, std, model_chans)
        self.register_buffer("mean", m)
        self.register_buffer("std", s)
        # timm models whose pre-logits features are wider than the trunk expose head_hidden_size.
        self.num_features = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_chans, h, w] in [0,1] -> normalized [N, model_chans, H, W] for the inner model."""
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False)
        if x.shape[1] != self.model_chans:
            x = x.expand(-1, self.model_chans, -1, -1)  # 1 -> 3 channels (resized first: cheaper)
        return (x - self.mean) / self.std

    @property
    def classifier_head(self) -> nn.Module:
        head = self.model.get_classifier()
        if not isinstance(head, nn.Module):
            raise DarhtError(f"{type(self.model).__name__} has no single classifier module; not supported")
        return head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.model.forward_features(self.prepare(x))
        return self.model.forward_head(h, pre_logits=True)  # pooled (and head-normed) [N, num_features]

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier_head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
