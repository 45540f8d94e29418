"""CIFAR-10 / CIFAR-100 from the official "python version": pickled batches, either extracted
(`cifar-10-batches-py/`, `cifar-100-python/`) or still inside the downloaded `.tar.gz`.

Each batch is a dict with b'data' (uint8 [N, 3072]: 1024 red, then green, then blue values of a
32x32 image, row-major) and b'labels' (CIFAR-10) or b'fine_labels' (CIFAR-100).
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from darht.data.base import ImageData, check_split, find_location
from darht.data.safe_pickle import safe_loads
from darht.errors import DarhtError
from darht.registry import DATASETS


@dataclass(frozen=True)
class _Layout:
    key: str
    folder: str          # extracted directory
    archive: str         # downloaded file
    batches: dict        # split -> member names
    meta: str
    labels_key: str
    names_key: str
    num_classes: int


CIFAR10 = _Layout("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                  {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                  "batches.meta", "labels", "label_names", 10)
CIFAR100 = _Layout("cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
                   {"train": ["train"], "test": ["test"]}, "meta", "fine_labels", "fine_label_names", 100)


def _probe(layout: _Layout, d: Path) -> Path | None:
    """The extracted folder or the archive under `d` (or `d` itself)."""
    if d.is_file():
        return d if d.name.endswith((".tar.gz", ".tgz", ".tar")) else None
    for cand in (d / layout.folder, d):
        if (cand / layout.meta).is_file():
            return cand
    if (d / layout.archive).is_file():
        return d / layout.archive
    return None


def _read_members(layout: _Layout, loc: Path, names: list[str]) -> dict[str, bytes]:
    """Raw bytes of each member, from the folder or (in one pass) from the archive."""
    out: dict[str, bytes] = {}
    if loc.is_dir():
        for n in names:
            p = loc / n
            if not p.is_file():
                raise DarhtError(f"{p}: missing {layout.key} file")
            out[n] = p.read_bytes()
        return out
    try:
        # only regular files below the expected folder: nothing is extracted to disk
        with tarfile.open(loc, "r:*") as tf:
            for m in tf:
                parts = Path(m.name).parts
                if m.isfile() and len(parts) == 2 and parts[0] == layout.folder and parts[1] in names:
                    f = tf.extractfile(m)
                    assert f is not None
                    out[parts[1]] = f.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DarhtError(f"{loc}: corrupt archive ({e.__class__.__name__}: {e})") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise DarhtError(f"{loc}: archive lacks {layout.folder}/{missing[0]}")
    return out


def _as_str_dict(obj: object, source: str) -> dict:
    if not isinstance(obj, dict):
        raise DarhtError(f"{source}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _decode_batch(layout: _Layout, raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _as_str_dict(safe_loads(raw, source), source)
    if "data" not in batch or layout.labels_key not in batch:
        raise DarhtError(f"{source}: batch lacks 'data' or '{layout.labels_key}'")
    data, labels = batch["data"], batch[layout.labels_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DarhtError(f"{source}: 'data' must be uint8 [N, 3072], got {desc}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DarhtError(f"{source}: '{layout.labels_key}' is not a list of integers") from None
    if len(labels) != len(data):
        raise DarhtError(f"{source}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DarhtError(f"{source}: labels span {labels.min()}..{labels.max()}, "
                         f"outside the {layout.num_classes} classes")
    return data, labels


def _load(layout: _Layout, split: str, root: str | Path | None) -> ImageData:
    check_split(layout.key, split)
    loc = find_location(layout.key, root, lambda d: _probe(layout, d))
    names = layout.batches[split]
    raw = _read_members(layout, loc, names + [layout.meta])
    src = (lambda n: str(loc / n)) if loc.is_dir() else (lambda n: f"{loc}:{layout.folder}/{n}")
    meta = _as_str_dict(safe_loads(raw[layout.meta], src(layout.meta)), src(layout.meta))
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(layout.names_key, [])]
    if len(classes) != layout.num_classes:
        raise DarhtError(f"{src(layout.meta)}: expected {layout.num_classes} '{layout.names_key}', got {len(classes)}")
    parts = [_decode_batch(layout, raw[n], src(n)) for n in names]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(data).view(-1, 3, 32, 32)  # [N, 3072] -> [N, 3, 32, 32] (channel planes)
    return ImageData(x, torch.from_numpy(labels), classes, layout.key, str(loc))


@DATASETS.register("cifar10")
def load_cifar10(split: str = "train", root: str | Path | None = None) -> ImageData:
    return _load(CIFAR10, split, root)


@DATASETS.register("cifar100")
def load_cifar100(split: str = "train", root: str | Path | None = None) -> ImageData:
    return _load(CIFAR100, split, root)
