"""Models from timm: small ViTs at the data's own size, and `timm:<name>` for any timm model.

Nothing here downloads: timm models are always built with pretrained=False (a local weights file
can be loaded with create_model(..., pretrained_file=PATH)). timm is imported lazily so that
`import darht` stays fast.

- `vit-tiny` (dim 192, 12 blocks, 3 heads), `vit-small` (384, 12, 6): timm's VisionTransformer
  built at img_size with a patch size that fits it (2 up to 16 px, 4 up to 32, 8 up to 64, else
  16), in_chans passed through; identity normalization unless mean/std are given.
- `timm:<name>`: timm.create_model(name, pretrained=False, num_classes=...) behind an
  InputAdapter that resizes to the model's native input size (its pretrained_cfg, or the
  `input_size` kwarg), repeats 1-channel input to 3 channels, and normalizes with the cfg's
  mean/std (or the mean/std kwargs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from darht.errors import DarhtError
from darht.models.adapters import InputAdapter
from darht.registry import MODELS

Stats = float | Sequence[float] | None


def default_patch_size(img_size: int) -> int:
    """The patch size for a ViT at img_size: about 8x8 tokens for small images, 16 px for large."""
    target = 2 if img_size <= 16 else 4 if img_size <= 32 else 8 if img_size <= 64 else 16
    return max(p for p in range(1, target + 1) if img_size % p == 0)  # fall back to a divisor


def _vit(num_classes: int, in_chans: int, img_size: int, *, embed_dim: int, depth: int, num_heads: int,
         patch_size: int | None, mean: Stats, std: Stats, vit_kwargs: dict[str, Any]) -> InputAdapter:
    from timm.models.vision_transformer import VisionTransformer

    p = int(patch_size) if patch_size is not None else default_patch_size(img_size)
    if p < 1 or img_size % p != 0:
        raise DarhtError(f"ViT patch_size {p} does not divide img_size {img_size}")
    try:
        net = VisionTransformer(img_size=img_size, patch_size=p, in_chans=in_chans, num_classes=num_classes,
                                embed_dim=embed_dim, depth=depth, num_heads=num_heads, **vit_kwargs)
    except TypeError as e:
        raise DarhtError(f"bad ViT argument: {e}") from None
    return InputAdapter(net, in_chans=in_chans, model_chans=in_chans, mean=mean, std=std)


@MODELS.register("vit-tiny")
def vit_tiny(num_classes: int, in_chans: int = 3, img_size: int = 32, *, embed_dim: int = 192,
             depth: int = 12, num_heads: int = 3, patch_size: int | None = None, mean: Stats = None,
             std: Stats = None, **vit_kwargs: Any) -> InputAdapter:
    return _vit(num_classes, in_chans, img_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                patch_size=patch_size, mean=mean, std=std, vit_kwargs=vit_kwargs)


@MODELS.register("vit-small")
def vit_small(num_classes: int, in_chans: int = 3, img_size: int = 32, *, embed_dim: int = 384,
              depth: int = 12, num_heads: int = 6, patch_size: int | None = None, mean: Stats = None,
              std: Stats = None, **vit_kwargs: Any) -> InputAdapter:
    return _vit(num_classes, in_chans, img_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                patch_size=patch_size, mean=mean, std=std, vit_kwargs=vit_kwargs)


def build_timm(timm_name: str, num_classes: int, in_chans: int = 3, img_size: int = 32, *,
               input_size: int | None = None, mean: Stats = None, std: Stats = None,
               **timm_kwargs: Any) -> InputAdapter:
    """`timm:<timm_name>`: a timm model (random init) behind the input adapter."""
    import timm

    if not timm.is_model(timm_name):
        raise DarhtError(f"unknown timm model '{timm_name}' (see timm.list_models())")
    if timm_kwargs.pop("pretrained", False):
        raise DarhtError("timm models are never downloaded here; pass pretrained_file=PATH to load local weights")
    for k in ("checkpoint_path", "pretrained_cfg_overlay"):
        if k in timm_kwargs:
            raise DarhtError(f"timm:{timm_name}: '{k}' is not supported; use pretrained_file=PATH")
    try:
        net = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    except TypeError as e:
        raise DarhtError(f"bad argument for timm:{timm_name}: {e}") from None
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    model_chans = int(cfg.get("input_size", (3,))[0])  # the inner model keeps its own channel count
    if input_size is None:
        size = tuple(cfg.get("input_size", (model_chans, img_size, img_size))[-2:])
    else:
        size = (int(input_size), int(input_size))
    resize = None if size == (img_size, img_size) else size
    return InputAdapter(net, in_chans=in_chans, model_chans=model_chans,
                        mean=cfg.get("mean") if mean is None else mean,
                        std=cfg.get("std") if std is None else std, input_size=resize)
