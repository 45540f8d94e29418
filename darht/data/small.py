"""Data sets that need no files: scikit-learn's 8x8 digits, and a learnable synthetic set for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from darht.data.base import ImageData, check_split, derive_seed
from darht.errors import DarhtError
from darht.registry import DATASETS

DIGITS_SPLIT_SEED = 0  # fixed: the train/test split of digits is part of the data set's definition


@DATASETS.register("digits")
def load_digits(split: str = "train", root: str | Path | None = None, size: int | None = None) -> ImageData:
    """1797 8x8 grayscale digits (values 0..16 scaled to [0, 1], float); a fixed 80/20 split.

    `size` upsamples (bilinear) to size x size, so models configured for e.g. 28 px run unchanged.
    """
    check_split("digits", split)
    from sklearn.datasets import load_digits as sk_load_digits  # shipped inside scikit-learn

    d = sk_load_digits()
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(d.target))
    n_train = int(round(0.8 * len(perm)))
    idx = np.sort(perm[:n_train] if split == "train" else perm[n_train:])
    x = torch.from_numpy(d.data[idx].astype(np.float32) / 16.0).view(-1, 1, 8, 8)  # [N, 64] -> [N, 1, 8, 8]
    y = torch.from_numpy(d.target[idx].astype(np.int64))
    if size is not None:
        if int(size) < 1:
            raise DarhtError(f"digits: size must be >= 1, got {size}")
        x = torch.nn.functional.interpolate(x, size=(int(size), int(size)), mode="bilinear",
                                            align_corners=False).clamp_(0, 1)
    return ImageData(x, y, [str(i) for i in range(10)], "digits", "sklearn.datasets.load_digits")


@DATASETS.register("synthetic")
def load_synthetic(split: str = "train", root: str | Path | None = None, n: int | None = None,
                   num_classes: int = 10, shape: Sequence[int] = (1, 28, 28), seed: int = 0,
                   noise: float = 0.15) -> ImageData:
    """Each class is a fixed random binary pattern (levels 0.25 / 0.75, from `seed`) plus Gaussian
    noise of std `noise`; train and test draw different noise and labels from the same patterns,
    so a tiny CNN separates the classes within a few steps. n defaults to 512 train / 256 test."""
    check_split("synthetic", split)
    shape = tuple(int(s) for s in shape)
    n = n if n is not None else (512 if split == "train" else 256)
    if len(shape) != 3 or min(shape) < 1 or num_classes < 2 or n < 1:
        raise DarhtError(f"synthetic: need shape (C, H, W), num_classes >= 2, n >= 1; "
                         f"got {shape}, {num_classes}, {n}")
    g_proto = torch.Generator().manual_seed(derive_seed(seed, "prototypes"))
    protos = 0.25 + 0.5 * (torch.rand(num_classes, *shape, generator=g_proto) > 0.5).float()
    g = torch.Generator().manual_seed(derive_seed(seed, split))
    y = torch.arange(n) % num_classes  # balanced
    y = y[torch.randperm(n, generator=g)]
    x = protos[y] + noise * torch.randn(n, *shape, generator=g)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # uint8 like the real data sets
    return ImageData(x, y, [f"class{i}" for i in range(num_classes)], "synthetic", f"synthetic(seed={seed})")
