"""Data larger than RAM: a memory-mapped uint8 cache of a data set, built once, mapped by every rank.

`darht data cache NAME` (or the first streaming use) decodes a split once into one file (its
format: darht.data.mapped), and `open_cached` maps it (`mmap`, private: nothing is ever written
back) into an `ImageData` whose `x` is the mapped tensor: no copy, so `subset`, `split_train_val`, `Loader` and evaluation
work unchanged, and a streamed run gets bit-identical batches to an in-memory one (the cache holds
the bytes `read_images` decodes; the same decoding function fills it). Pages are shared through
the page cache by every process that maps the file (all DDP ranks on a machine). Batches are read
with pread (`MappedStore.read`), not through the map, so a process's resident memory holds its
batches, not the file's pages: it stays flat however large the file is.

The build writes `<file>.tmp.<pid>` sequentially (no image is held in memory beyond a chunk),
fsyncs it and renames it into place, under a lock file (`flock`): a killed build leaves only a
tmp file (removed by the next build), never a half-written cache, and ranks that start together
build once. The header keeps a fingerprint of the source (every file's path, size, mtime and
label); a cache whose source changed is stale and is rebuilt.

Automatic choice (`data.stream: null`): image-file data sets (those whose loader has a `listing`:
imagefolder, tiny-imagenet) stream when their decoded split (N*C*H*W bytes) times the ranks on
this machine exceeds `STREAM_FRACTION` (25%) of the memory available now (MemAvailable); every
other data set is read into memory. `data.stream: true` streams any uint8 data set (CIFAR,
Fashion-MNIST: loaded once to build the cache), `false` never streams.
Cache directory: `--out`, else $DARHT_CACHE, else ~/.cache/darht/cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from darht.data.base import ImageData, _check_options, check_split, load_dataset
from darht.data import imagefolder
from darht.data.mapped import FORMAT, VERSION, map_cache, read_header, write_cache
from darht.errors import DarhtError
from darht.registry import DATASETS

STREAM_FRACTION = 0.25     # automatic: stream above this fraction of the available memory
CHUNK_IMAGES = 256         # images decoded (and held) at a time while building
SUFFIX = ".u8cache"


# ---- where ----------------------------------------------------------------------------------------

def cache_dir(out: str | Path | None = None) -> Path:
    if out is not None:
        return Path(out).expanduser()
    if os.environ.get("DARHT_CACHE"):
        return Path(os.environ["DARHT_CACHE"]).expanduser()
    return Path.home() / ".cache" / "darht" / "cache"


def cache_path(name: str, split: str, root: str | Path | None = None, out: str | Path | None = None,
               **kw: Any) -> Path:
    """The cache file of (name, split, root, loader options): one file per combination."""
    key = json.dumps({"name": name, "split": split, "kwargs": kw,
                      "root": str(Path(root).expanduser().absolute()) if root is not None else None},
                     sort_keys=True, default=str)
    digest = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
    return cache_dir(out) / f"{name}-{split}-{digest}{SUFFIX}"


# ---- the source: what a cache is built from -------------------------------------------------------

@dataclass
class _Source:
    n: int
    shape: tuple[int, int, int]
    classes: list[str]
    labels: np.ndarray
    location: str
    fingerprint: str
    chunks: Callable[[], Iterator[np.ndarray]]  # uint8 [k, C, H, W] pieces, in order


def _fingerprint(entries: list[tuple[Path, int]]) -> str:
    """Of (file, label) pairs: path, size and mtime of each, and its label."""
    h = hashlib.sha256()
    for p, label in entries:
        try:
            st = os.stat(p)
        except OSError as e:
            raise DarhtError(f"{p}: cannot read ({e.__class__.__name__}: {e})") from None
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\t{label}\n".encode())
    return h.hexdigest()


def _location_files(location: str) -> list[tuple[Path, int]]:
    p = Path(location)
    if p.is_file():
        return [(p, 0)]
    if p.is_dir():
        return [(f, 0) for f in sorted(p.rglob("*")) if f.is_file()]
    return []


def streamable(name: str) -> bool:
    """Whether `name` can be decoded piece by piece (an image-file data set with a listing)."""
    return hasattr(DATASETS.get(name), "listing")


def _listing(name: str, split: str, root: Any, kw: dict):
    return DATASETS.get(name).listing(split, root, **kw)


def _source(name: str, split: str, root: Any, kw: dict) -> _Source:
    if streamable(name):
        ls = _listing(name, split, root, kw)

        def chunks() -> Iterator[np.ndarray]:
            buf = np.empty((CHUNK_IMAGES, ls.channels, *ls.hw), dtype=np.uint8)
            with ThreadPoolExecutor(max_workers=imagefolder.decode_threads()) as pool:
                for i in range(0, len(ls.files), CHUNK_IMAGES):
                    part = ls.files[i:i + CHUNK_IMAGES]
                    imagefolder.decode_into(buf[:len(part)], part, ls.channels, ls.resize, first=ls.files[0], pool=pool)
                    yield buf[:len(part)]

        return _Source(len(ls.files), (ls.channels, *ls.hw), list(ls.classes), np.asarray(ls.labels, dtype=np.int64),
                       ls.location, _fingerprint(list(zip(ls.files, ls.labels))), chunks)
    data = load_dataset(name, split, root, **kw)  # an in-memory format: read once to build
    if data.dtype != torch.uint8:
        raise DarhtError(f"{name}: its images are {str(data.dtype).replace('torch.', '')}; "
                         "the streaming cache holds uint8 images (use data.stream: false)")
    x = data.x.numpy()
    return _Source(len(data), data.shape, list(data.classes), data.y.numpy().astype(np.int64), data.location,
                   _fingerprint(_location_files(data.location)), lambda: iter([x]))


def _current_fingerprint(name: str, split: str, root: Any, kw: dict, header: dict) -> str:
    if streamable(name):
        ls = _listing(name, split, root, kw)
        return _fingerprint(list(zip(ls.files, ls.labels)))
    return _fingerprint(_location_files(header["location"]))


# ---- build and open -------------------------------------------------------------------------------

@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per cache file at a time (ranks started together wait for the first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): builds are still atomic, only not deduplicated
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fresh(path: Path, name: str, split: str, root: Any, kw: dict) -> tuple[ImageData | None, str]:
    """(the mapped cache, "") if `path` is a complete cache of the current source, else (None, why)."""
    if not path.is_file():
        return None, "missing"
    try:
        header = read_header(path)
    except DarhtError as e:
        return None, str(e)
    if _current_fingerprint(name, split, root, kw, header) != header.get("fingerprint"):
        return None, "its source files changed"
    return map_cache(path), ""


def _build(path: Path, name: str, split: str, root: Any, kw: dict, quiet: bool) -> None:
    """Decode the source into `path` (the caller holds the lock)."""
    src = _source(name, split, root, kw)
    if not quiet:
        gib = src.n * int(np.prod(src.shape)) / 2**30
        print(f"darht: caching {name} {split} ({src.n} images of {'x'.join(map(str, src.shape))}, "
              f"{gib:.2f} GiB) in {path}", file=sys.stderr)
    header = {"format": FORMAT, "version": VERSION, "name": name, "split": split,
              "root": str(root) if root is not None else None, "kwargs": kw, "location": src.location,
              "n": src.n, "shape": list(src.shape), "classes": src.classes,
              "fingerprint": src.fingerprint, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_cache(path, header, src.n, src.shape, src.labels, src.chunks())


def build_cache(name: str, split: str = "train", root: str | Path | None = None, out: str | Path | None = None,
                force: bool = False, quiet: bool = False, **kw: Any) -> tuple[Path, bool]:
    """Build the cache of one split unless an up-to-date one exists: (its path, whether it was built)."""
    _check_options(name, DATASETS.get(name), kw)
    check_split(name, split)
    path = cache_path(name, split, root, out, **kw)
    with _locked(path):
        if not force and _fresh(path, name, split, root, kw)[0] is not None:
            return path, False
        _build(path, name, split, root, kw, quiet)
    return path, True


def open_cached(name: str, split: str = "train", root: str | Path | None = None, out: str | Path | None = None,
                build: bool = True, quiet: bool = False, **kw: Any) -> ImageData:
    """The mapped cache of a split, built first (once, under the lock) if missing or stale."""
    _check_options(name, DATASETS.get(name), kw)
    check_split(name, split)
    path = cache_path(name, split, root, out, **kw)
    data, why = _fresh(path, name, split, root, kw)
    if data is not None:
        return data
    if not build:
        raise DarhtError(f"{name} {split}: no usable cache at {path} ({why}); "
                         f"build it with `darht data cache {name}`")
    with _locked(path):
        data, _ = _fresh(path, name, split, root, kw)  # another rank may have built it meanwhile
        if data is None:
            _build(path, name, split, root, kw, quiet)
            data = map_cache(path)
    return data


# ---- the automatic choice -------------------------------------------------------------------------

def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable; else free physical pages), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def decoded_bytes(name: str, split: str = "train", root: str | Path | None = None, **kw: Any) -> int | None:
    """uint8 bytes of a decoded split, from file headers (None: not an image-file data set)."""
    if not streamable(name):
        return None
    ls = _listing(name, split, root, kw)
    return len(ls.files) * ls.channels * ls.hw[0] * ls.hw[1]


def ranks_here(world_size: int = 1) -> int:
    """Processes on this machine that each would hold a copy (torchrun sets LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    except ValueError:
        return max(1, world_size)


def choose_stream(stream: bool | None, name: str, split: str = "train", root: str | Path | None = None,
                  ranks: int = 1, **kw: Any) -> tuple[bool, str]:
    """(stream?, why): `stream` when given; otherwise stream an image-file data set whose decoded
    size times `ranks` exceeds STREAM_FRACTION of the available memory."""
    _check_options(name, DATASETS.get(name), kw)
    if stream is not None:
        return bool(stream), "data.stream is " + ("true" if stream else "false")
    size = decoded_bytes(name, split, root, **kw)
    if size is None:
        return False, f"{name} is an in-memory format"
    avail = available_memory()
    if avail is None:
        return False, "available memory unknown"
    need = size * max(1, ranks)
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    if need > STREAM_FRACTION * avail:
        return True, (f"decoded size {gib(size)} x {ranks} rank(s) > {STREAM_FRACTION:.0%} of the "
                      f"{gib(avail)} available")
    return False, f"decoded size {gib(size)} x {ranks} rank(s) fits in memory ({gib(avail)} available)"


def open_dataset(name: str, split: str = "train", root: str | Path | None = None, *,
                 stream: bool | None = None, ranks: int = 1, out: str | Path | None = None,
                 **kw: Any) -> ImageData:
    """`load_dataset`, or the mapped cache when streaming (`stream`: True, False, None = automatic;
    see `choose_stream`). Both give the same images, labels and classes."""
    _check_options(name, DATASETS.get(name), kw)
    if choose_stream(stream, name, split, root, ranks, **kw)[0]:
        return open_cached(name, split, root, out, **kw)
    return load_dataset(name, split, root, **kw)
