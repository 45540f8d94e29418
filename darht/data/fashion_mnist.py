"""Fashion-MNIST from IDX files (gzipped or not), as the Debian package and the official site ship them.

IDX: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions, then one big-endian
int32 per dimension, then the data. Images are 0x00000803 [N, 28, 28], labels 0x00000801 [N].
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from darht.data.base import ImageData, check_split, find_location
from darht.errors import DarhtError
from darht.registry import DATASETS

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {  # split -> (images stem, labels stem)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 IDX array with `ndim` dimensions; DarhtError naming the file if it is not one."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DarhtError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DarhtError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DarhtError(f"{path}: bad IDX magic {raw[:4].hex()}, expected 000008{ndim:02x} "
                         f"(uint8, {ndim} dimensions)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DarhtError(f"{path}: {len(raw) - header} data bytes, dimensions {dims} need {size} "
                         f"(truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_file(d: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (d / name).is_file():
            return d / name
    return None


def _probe(d: Path) -> Path | None:
    for cand in (d, d / "fashion-mnist", d / "FashionMNIST" / "raw"):
        if all(_find_file(cand, s) for pair in FILES.values() for s in pair):
            return cand
    return None


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> ImageData:
    check_split("fashion-mnist", split)
    d = find_location("fashion-mnist", root, _probe)
    img_path, lbl_path = (_find_file(d, s) for s in FILES[split])
    assert img_path is not None and lbl_path is not None
    images = read_idx(img_path, 3)
    labels = read_idx(lbl_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise DarhtError(f"{img_path}: {images.shape[0]} images but {lbl_path.name} has {labels.shape[0]} labels")
    if len(labels) and labels.max() >= len(CLASSES):
        raise DarhtError(f"{lbl_path}: label {int(labels.max())} outside the {len(CLASSES)} classes")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # [N, 28, 28] -> [N, 1, 28, 28]
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageData(x, y, list(CLASSES), "fashion-mnist", str(d))
