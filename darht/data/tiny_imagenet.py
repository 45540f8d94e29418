"""Tiny ImageNet (200 classes, 64x64 RGB) in the layout of the official `tiny-imagenet-200.zip`.

  tiny-imagenet-200/wnids.txt                 the 200 WordNet ids
  tiny-imagenet-200/words.txt                 optional: "<wnid>\\t<names, comma separated>"
  tiny-imagenet-200/train/<wnid>/images/*.JPEG
  tiny-imagenet-200/val/images/*.JPEG + val/val_annotations.txt ("<file>\\t<wnid>\\t<box>")
The official test set has no labels, so split 'test' is the labelled val set (as in the
literature); hold out part of 'train' with `split_train_val` for model selection.
Labels follow the sorted wnids, as torchvision's ImageFolder over train/ would number them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from darht.data.base import ImageData, check_split, find_location
from darht.data.imagefolder import EXTENSIONS, Listing, image_header, listing_of
from darht.errors import DarhtError
from darht.registry import DATASETS

FOLDER = "tiny-imagenet-200"


def _probe(d: Path) -> Path | None:
    for cand in (d / FOLDER, d):
        if (cand / "wnids.txt").is_file():
            return cand
    return None


def _read_text(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DarhtError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None


def _classes(d: Path) -> tuple[list[str], list[str]]:
    """(sorted wnids, human-readable class names)."""
    wnids = [w.strip() for w in _read_text(d / "wnids.txt") if w.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DarhtError(f"{d / 'wnids.txt'}: empty or has repeated wnids")
    wnids = sorted(wnids)
    words: dict[str, str] = {}
    if (d / "words.txt").is_file():
        for line in _read_text(d / "words.txt"):
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    return wnids, [words.get(w) or w for w in wnids]


def _list(d: Path, split: str, wnids: list[str]) -> tuple[list[Path], list[int]]:
    index = {w: i for i, w in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for w in wnids:
            img_dir = d / "train" / w / "images"
            if not img_dir.is_dir():
                raise DarhtError(f"{img_dir}: missing Tiny ImageNet class directory")
            found = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in EXTENSIONS)
            files += found
            labels += [index[w]] * len(found)
    else:
        ann = d / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DarhtError(f"{ann}: missing (the labels of Tiny ImageNet's val set, used as 'test')")
        for lineno, line in enumerate(_read_text(ann), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise DarhtError(f"{ann}:{lineno}: expected '<file>\\t<wnid from wnids.txt>', got {line!r}")
            p = d / "val" / "images" / fields[0]
            if not p.is_file():
                raise DarhtError(f"{p}: listed in {ann.name} but missing")
            files.append(p)
            labels.append(index[fields[1]])
    if not files:
        raise DarhtError(f"{d}: no {split} images")
    return files, labels


def _listing(split: str = "train", root: str | Path | None = None,
             size: int | Sequence[int] | None = None) -> Listing:
    check_split("tiny-imagenet", split)
    d = find_location("tiny-imagenet", root, _probe)
    wnids, classes = _classes(d)
    files, labels = _list(d, split, wnids)
    # 3 channels: a few Tiny ImageNet JPEGs are grayscale
    return listing_of(files, labels, classes, 3, size, "tiny-imagenet", str(d))


@DATASETS.register("tiny-imagenet")
def load_tiny_imagenet(split: str = "train", root: str | Path | None = None,
                       size: int | Sequence[int] | None = None) -> ImageData:
    """`size` resizes (e.g. 32 for CIFAR-sized models); default keeps 64x64."""
    return _listing(split, root, size).read()


def _info(root: str | Path | None, size: int | Sequence[int] | None = None) -> dict:
    """Counts files instead of decoding 110k JPEGs."""
    d = find_location("tiny-imagenet", root, _probe)
    wnids, classes = _classes(d)
    sizes, files = {}, []
    for split in ("train", "test"):
        files, _ = _list(d, split, wnids)
        sizes[split] = len(files)
    hw = (size, size) if isinstance(size, int) else tuple(size) if size else image_header(files[0])[1]
    return {"name": "tiny-imagenet", "sizes": sizes, "num_classes": len(classes), "classes": classes,
            "shape": [3, *hw], "location": str(d)}


load_tiny_imagenet.info = _info  # type: ignore[attr-defined]
load_tiny_imagenet.listing = _listing  # type: ignore[attr-defined]  # streamable (darht.data.cache)
