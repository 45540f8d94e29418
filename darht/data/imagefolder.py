"""Image files on disk: the `imagefolder` data set, and the decoding that Tiny ImageNet shares.

Layouts (class names are directory names, labels follow their sorted order):
  root/train/<class>/**/*.png|jpg|...  and  root/test/<class>/...  (or root/val/ when there is no test/)
  root/<class>/**/*  (no train/ directory): a fixed, seed-free split: within each class, in sorted
  file order, every 5th file (the 5th, 10th, ...) is 'test' and the rest is 'train' (80/20).
Images are decoded with PIL to uint8; they must all have one size unless `size` resizes them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from darht.data.base import ImageData
from darht.errors import DarhtError
from darht.registry import DATASETS

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
TEST_EVERY = 5


def _size_hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2:
        raise DarhtError(f"size must be an int or [height, width], got {size}")
    return (int(size[0]), int(size[1]))


def image_header(path: Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (height, width)) without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.mode, (im.height, im.width)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DarhtError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from None


def _decode(path: Path, channels: int, hw: tuple[int, int] | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if hw is not None and (im.height, im.width) != hw:
                im = im.resize((hw[1], hw[0]), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except Exception as e:
        raise DarhtError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from None
    return a[None] if channels == 1 else a.transpose(2, 0, 1)  # HW -> 1HW, HWC -> CHW


def read_images(paths: Sequence[Path], channels: int, size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Decode `paths` into one uint8 tensor [N, channels, H, W] (threads: PIL decodes without the GIL)."""
    if not paths:
        raise DarhtError("no images to read")
    hw = _size_hw(size) or image_header(paths[0])[1]
    out = np.empty((len(paths), channels, *hw), dtype=np.uint8)
    decode_into(out, paths, channels, size is not None, first=paths[0])
    return torch.from_numpy(out)


def decode_into(out: np.ndarray, paths: Sequence[Path], channels: int, resize: bool,
                first: Path | None = None, pool: ThreadPoolExecutor | None = None) -> None:
    """Decode `paths` into `out` (uint8 [len(paths), channels, H, W]), resizing to (H, W) when
    `resize`, else refusing an image of another size (`first`: the image that set the size).
    The one decoding path: `read_images` and the streaming cache (`darht.data.cache`) share it, so
    a cached data set holds exactly the bytes an in-memory load decodes."""
    hw = tuple(out.shape[2:])
    first = first or paths[0]

    def one(i: int) -> None:
        a = _decode(paths[i], channels, hw if resize else None)  # type: ignore[arg-type]
        if a.shape[1:] != hw:
            raise DarhtError(f"{paths[i]}: image is {a.shape[1]}x{a.shape[2]}, but {first.name} is "
                             f"{hw[0]}x{hw[1]}; pass size=... to resize")
        out[i] = a

    if pool is not None:
        list(pool.map(one, range(len(paths))))  # list(): re-raise the first error here
        return
    with ThreadPoolExecutor(max_workers=decode_threads()) as own:
        list(own.map(one, range(len(paths))))


def decode_threads() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass
class Listing:
    """What an image-file data set is, without decoding it: the streaming cache builds from this."""

    files: list[Path]
    labels: list[int]
    classes: list[str]
    channels: int
    hw: tuple[int, int]
    resize: bool          # resize every image to hw (a `size` was given), else all must be hw
    name: str
    location: str

    def read(self) -> ImageData:
        """Decode everything into memory (the in-RAM path)."""
        out = np.empty((len(self.files), self.channels, *self.hw), dtype=np.uint8)
        decode_into(out, self.files, self.channels, self.resize)
        return ImageData(torch.from_numpy(out), torch.tensor(self.labels), self.classes, self.name, self.location)


def listing_of(files: list[Path], labels: list[int], classes: list[str], channels: int,
               size: int | Sequence[int] | None, name: str, location: str) -> Listing:
    if not files:
        raise DarhtError("no images to read")
    hw = _size_hw(size) or image_header(files[0])[1]
    return Listing(files, labels, classes, channels, hw, size is not None, name, location)


def auto_channels(paths: Sequence[Path]) -> int:
    """1 if every image is grayscale, else 3 (headers only)."""
    return 1 if all(image_header(p)[0] in GRAY_MODES for p in paths) else 3


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def _class_dirs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_imagefolder(root: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, classes) of one split of an image folder."""
    if not root.is_dir():
        raise DarhtError(f"{root}: image folder not found")
    if (root / "train").is_dir():  # split layout
        test_dir = root / "test" if (root / "test").is_dir() else root / "val"
        split_dirs = {"train": root / "train", "test": test_dir}
        if split not in split_dirs:
            raise DarhtError(f"imagefolder: unknown split '{split}'; choose from: train, test")
        d = split_dirs[split]
        if not d.is_dir():
            raise DarhtError(f"{root}: has train/ but no test/ or val/ directory for split 'test'")
        # the union of both splits' classes: a class missing from one split keeps its label
        classes = sorted(set().union(*(_class_dirs(s) for s in split_dirs.values() if s.is_dir())))
        files, labels = [], []
        for c, name in enumerate(classes):
            if (d / name).is_dir():
                found = _images_in(d / name)
                files += found
                labels += [c] * len(found)
    else:  # flat layout: a fixed 80/20 split per class
        if split not in ("train", "test"):
            raise DarhtError(f"imagefolder: unknown split '{split}'; choose from: train, test")
        d = root
        classes = _class_dirs(root)
        files, labels = [], []
        for c, name in enumerate(classes):
            found = [p for i, p in enumerate(_images_in(root / name))
                     if ((i + 1) % TEST_EVERY == 0) == (split == "test")]
            files += found
            labels += [c] * len(found)
    if not classes:
        raise DarhtError(f"{d}: no class directories (expected {d}/<class>/<image files>)")
    if not files:
        raise DarhtError(f"{d}: no image files ({', '.join(EXTENSIONS)}) in the class directories")
    return files, labels, classes


def _auto_channels(root: Path, split: str, files: list[Path]) -> int:
    # decided on the train split, so that train and test always get the same number of channels
    return auto_channels(files if split == "train" else list_imagefolder(root, "train")[0])


def _imagefolder_listing(split: str = "train", root: str | Path | None = None,
                         size: int | Sequence[int] | None = None, channels: int | None = None) -> Listing:
    if root is None:
        raise DarhtError("imagefolder needs a root directory (data.root)")
    root = Path(root).expanduser()
    files, labels, classes = list_imagefolder(root, split)
    if channels not in (None, 1, 3):
        raise DarhtError(f"imagefolder: channels must be 1 or 3, got {channels}")
    ch = channels or _auto_channels(root, split, files)
    return listing_of(files, labels, classes, ch, size, "imagefolder", str(root))


@DATASETS.register("imagefolder")
def load_imagefolder(split: str = "train", root: str | Path | None = None,
                     size: int | Sequence[int] | None = None, channels: int | None = None) -> ImageData:
    """`channels`: 1 or 3; None = 1 if every training image is grayscale. `size`: resize to this (H, W)."""
    return _imagefolder_listing(split, root, size, channels).read()


def _imagefolder_info(root: str | Path | None, size=None, channels=None) -> dict:
    if root is None:
        raise DarhtError("imagefolder needs a root directory (data.root)")
    root = Path(root).expanduser()
    sizes, classes, files = {}, [], []
    for split in ("train", "test"):
        files, _, classes = list_imagefolder(root, split)
        sizes[split] = len(files)
    ch = channels or auto_channels(list_imagefolder(root, "train")[0])
    hw = _size_hw(size) or image_header(files[0])[1]
    return {"name": "imagefolder", "sizes": sizes, "num_classes": len(classes), "classes": classes,
            "shape": [ch, *hw], "location": str(root)}


load_imagefolder.info = _imagefolder_info  # type: ignore[attr-defined]
# files, labels and shape without decoding: lets `darht.data.cache` stream this data set
load_imagefolder.listing = _imagefolder_listing  # type: ignore[attr-defined]
