"""The in-memory data set every loader returns, and the entry points that find loaders by name.

A loader is registered in `darht.registry.DATASETS` as `fn(split, root, **kw) -> ImageData`.
Images stay uint8 (0..255) in memory where the format is uint8: a float copy of CIFAR-10's train
set would take 4x the memory, and `Loader` converts each batch on the device instead.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from darht.errors import DarhtError
from darht.registry import DATASETS

SPLITS = ("train", "test")


@dataclass(repr=False, eq=False)
class ImageData:
    """Images `x` (NCHW; uint8 means 0..255, float means [0, 1]) with int64 labels `y` [N].

    In RAM (every loader's result) `x` is one tensor and `subset` copies. A *mapped* data set
    (`darht.data.cache`: a uint8 file mapped into memory, `store` set) never copies its images:
    its `x` is the mapped tensor itself, a subset keeps row indices into it, and `take(idx)` (what
    `Loader` calls per batch) reads just those rows. Reading `x` of a mapped subset reads the
    subset (a copy); `take` and `Loader` never read more than a batch.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str = ""
    location: str = ""

    # not fields: set by darht.data.cache on a mapped data set, carried over by subset()
    store = None                       # the mapped file (darht.data.mapped.MappedStore) or None
    _rows = None                       # a mapped subset: its rows (LongTensor) of the mapped tensor

    def __post_init__(self) -> None:
        where = self.location or self.name or "data set"
        if self._base.dim() != 4:
            raise DarhtError(f"{where}: images must be NCHW, got shape {tuple(self._base.shape)}")
        self.y = torch.as_tensor(self.y, dtype=torch.int64)
        if self.y.dim() != 1 or len(self.y) != len(self._base):
            raise DarhtError(f"{where}: {len(self._base)} images but {self.y.numel()} labels")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise DarhtError(f"{where}: labels span {int(self.y.min())}..{int(self.y.max())}, "
                             f"outside the {len(self.classes)} classes")

    def __repr__(self) -> str:  # never prints (or gathers) the pixels
        kind = f"mapped from {self.store.path}" if self.store is not None else "in memory"
        return (f"ImageData(name={self.name!r}, n={len(self)}, shape={self.shape}, "
                f"dtype={self._base.dtype}, classes={self.num_classes}, {kind})")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._base.shape[1:])  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        return self._base.dtype

    @property
    def device(self) -> torch.device:
        return self._base.device

    @property
    def mapped(self) -> bool:
        return self.store is not None

    def subset(self, idx: Sequence[int] | torch.Tensor | slice) -> "ImageData":
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx)
            idx = idx.nonzero().squeeze(1) if idx.dtype == torch.bool else idx.long()  # mask or indices
        if self.store is None:  # in memory: a copy, as always
            return ImageData(self.x[idx], self.y[idx], list(self.classes), self.name, self.location)
        out = copy.copy(self)  # mapped: the same mapped tensor, other rows (no image is copied)
        out.y, out.classes = self.y[idx], list(self.classes)
        out._rows = (torch.arange(len(self)) if self._rows is None else self._rows)[idx]
        return out

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The images at positions `idx` (a LongTensor), as a new tensor: a mapped data set reads
        only those rows from its file (`MappedStore.read`), nothing else enters memory."""
        if self.store is None:
            return self._base[idx]
        return self.store.read(idx if self._rows is None else self._rows[idx.cpu()])

    def float_x(self) -> torch.Tensor:
        return to_float(self.take(torch.arange(len(self))) if self.store is not None else self.x)


def _get_x(self: ImageData) -> torch.Tensor:
    if self._rows is None:
        return self._base
    return self.take(torch.arange(len(self)))  # a mapped subset: gathered on request


def _set_x(self: ImageData, value: torch.Tensor) -> None:
    self._base = value
    self._rows = None


# `x` is a property over the stored tensor (`_base`), so that a mapped subset (base + rows)
# still reads as its own images; the dataclass __init__ assigns through it.
ImageData.x = property(_get_x, _set_x, doc="The images, NCHW (a mapped subset gathers them).")  # type: ignore[assignment]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float [0, 1]; float passes through (as float32 unless already floating)."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x if x.is_floating_point() else x.float()


def load_dataset(name: str, split: str = "train", root: str | Path | None = None, **kw: Any) -> ImageData:
    """Load split 'train' or 'test' of a registered data set (see `DATASETS.names()`)."""
    loader = DATASETS.get(name)
    _check_options(name, loader, kw)
    return loader(split, root, **kw)


def _check_options(name: str, loader: Callable, kw: dict) -> None:
    """Unknown options (e.g. from data.kwargs in a config) -> DarhtError, not a TypeError."""
    params = list(inspect.signature(loader).parameters)[2:]  # after (split, root)
    unknown = [k for k in kw if k not in params]
    if unknown:
        raise DarhtError(f"{name}: unknown option(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(params) or 'none'}")


def split_train_val(data: ImageData, val_fraction: float, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Hold out a seeded random `val_fraction` of `data` (for checkpoint selection, not the test set)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DarhtError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(data)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)  # a requested split never comes back empty
    g = torch.Generator().manual_seed(derive_seed(seed, "split"))
    perm = torch.randperm(n, generator=g)
    val_idx, _ = perm[:n_val].sort()
    train_idx, _ = perm[n_val:].sort()  # sorted: the split changes membership, not order
    return data.subset(train_idx), data.subset(val_idx)


def dataset_info(name: str, root: str | Path | None = None, **kw: Any) -> dict:
    """{name, sizes: {split: n}, num_classes, classes, shape, location} of a data set.

    A loader may carry a cheaper `fn.info(root, **kw)` (e.g. counting files instead of decoding
    100k JPEGs); otherwise both splits are loaded.
    """
    loader = DATASETS.get(name)
    _check_options(name, loader, kw)
    if hasattr(loader, "info"):
        return loader.info(root, **kw)
    sizes, first = {}, None
    for split in SPLITS:
        d = loader(split, root, **kw)
        sizes[split] = len(d)
        first = first or d
    assert first is not None
    return {"name": name, "sizes": sizes, "num_classes": first.num_classes, "classes": first.classes,
            "shape": list(first.shape), "location": first.location}


# ---- helpers shared by the format modules -------------------------------------------------------

def check_split(name: str, split: str, allowed: Iterable[str] = SPLITS) -> None:
    allowed = tuple(allowed)
    if split not in allowed:
        raise DarhtError(f"{name}: unknown split '{split}'; choose from: {', '.join(allowed)}")


def default_dirs(key: str) -> list[Path]:
    """Where a data set is looked for when no root is given, in order."""
    dirs = []
    if os.environ.get("DARHT_DATA"):
        dirs.append(Path(os.environ["DARHT_DATA"]) / key)
    dirs.append(Path.home() / ".cache" / "darht" / key)
    dirs.append(Path("/usr/share/datasets") / key)
    return dirs


def find_location(key: str, root: str | Path | None, probe: Callable[[Path], Path | None]) -> Path:
    """First directory for which `probe(dir)` finds the data, among `root` (when given: only there,
    an explicit root is never silently replaced) or the default directories."""
    candidates = [Path(root).expanduser()] if root is not None else default_dirs(key)
    for d in candidates:
        if d.exists():
            found = probe(d)
            if found is not None:
                return found
    where = ", ".join(str(d) for d in candidates)
    hint = f" (download it with `darht data download {key}`)" if key in ("fashion-mnist", "cifar10", "cifar100", "tiny-imagenet") else ""
    raise DarhtError(f"{key}: data not found in {where}{hint}")


def derive_seed(*parts: int | str) -> int:
    """A well-mixed 63-bit seed from ints/strings: (seed, epoch) and (seed, epoch + 1) share nothing."""
    key = tuple(p if isinstance(p, str) else int(p) for p in parts)  # np.int64(3) seeds like 3
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
