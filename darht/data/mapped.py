"""The cache file format of darht.data.cache: a data set's uint8 images and labels in one file,
mapped without a copy.

    b"DARHTU8\\n" | header length (uint64 LE) | header (JSON) | pad to 4096 | x: uint8 [N, C, H, W]
    | pad to 4096 | y: int64 LE [N]

`write_cache` writes one atomically (tmp + fsync + rename), `read_header` checks one, `map_cache`
maps one into an `ImageData` whose `x` is the map, and `MappedStore.read` gathers batches.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from darht.data.base import ImageData
from darht.errors import DarhtError

MAGIC = b"DARHTU8\n"
FORMAT = "darht-u8-cache"
VERSION = 1
ALIGN = 4096


class MappedStore:
    """One open cache file: the map behind `x`, and `read(rows)`, what batches use.

    `read` copies rows with `os.preadv` (in file order, consecutive rows in one call) instead of
    through the map: the kernel maps whole large folios on a page fault (about 1 MiB per row
    touched here), so gathering random rows through a map grows resident memory with the data
    set; pread fills only the batch, and the file's pages stay in the page cache, shared by
    every process that reads it (all DDP ranks on the machine)."""

    def __init__(self, path: Path, mm: mmap.mmap, header: dict, fd: int, x_offset: int, shape: tuple[int, ...]):
        self.path = path
        self.mm = mm
        self.header = header
        self.fd = fd
        self.x_offset = x_offset
        self.shape = tuple(shape)  # [N, C, H, W]
        self.row_bytes = int(np.prod(shape[1:]))

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (OSError, AttributeError, TypeError):
            pass

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 [len(rows), C, H, W]: rows `rows` (indices into the file's N images)."""
        r = rows.to("cpu", torch.int64).numpy().reshape(-1)
        out = np.empty((len(r), *self.shape[1:]), dtype=np.uint8)
        if len(r) == 0:
            return torch.from_numpy(out)
        if r.min() < 0 or r.max() >= self.shape[0]:
            raise IndexError(f"row index out of range for {self.shape[0]} images")
        order = np.argsort(r, kind="stable")      # read in file order
        rs = r[order]
        # one read per run of consecutive rows going to consecutive slots of `out`
        cut = np.flatnonzero((np.diff(rs) != 1) | (np.diff(order) != 1)) + 1
        flat = out.reshape(len(r), self.row_bytes)
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(r)]):
            dst = memoryview(flat[order[a]:order[a] + (b - a)]).cast("B")
            off = self.x_offset + int(rs[a]) * self.row_bytes
            got = 0
            while got < len(dst):  # pread may return short counts
                k = os.preadv(self.fd, [dst[got:]], off + got)
                if k <= 0:
                    raise DarhtError(f"{self.path}: short read (the file was truncated?)")
                got += k
        return torch.from_numpy(out)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _layout(header_len: int, n: int, c: int, h: int, w: int) -> tuple[int, int, int]:
    """(x offset, y offset, file size) of a cache file."""
    x_off = _align(len(MAGIC) + 8 + header_len)
    y_off = _align(x_off + n * c * h * w)
    return x_off, y_off, y_off + 8 * n


def read_header(path: Path) -> dict:
    """The header of a cache file (DarhtError if it is not one, or is truncated)."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise DarhtError(f"{path}: not a darht cache file")
            hlen = int.from_bytes(f.read(8), "little")
            if not 0 < hlen < (64 << 20):
                raise DarhtError(f"{path}: corrupt cache header")
            header = json.loads(f.read(hlen).decode("utf-8"))
            size = os.fstat(f.fileno()).st_size
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DarhtError(f"{path}: unreadable cache ({e.__class__.__name__}: {e})") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise DarhtError(f"{path}: cache format {header.get('format')} v{header.get('version')}, "
                         f"expected {FORMAT} v{VERSION}")
    n, (c, h, w) = int(header["n"]), header["shape"]
    if size != _layout(hlen, n, c, h, w)[2]:
        raise DarhtError(f"{path}: truncated cache ({size} bytes)")
    header["_header_len"] = hlen
    return header


def map_cache(path: str | Path) -> ImageData:
    """Map a cache file: `x` is the mapped uint8 tensor (no copy), `y` is read into memory."""
    path = Path(path)
    header = read_header(path)
    n, (c, h, w) = int(header["n"]), header["shape"]
    x_off, y_off, _ = _layout(header["_header_len"], n, c, h, w)
    fd = os.open(path, os.O_RDONLY)
    # ACCESS_COPY: private pages, so the tensor is writable without a warning and a write never
    # reaches the file (nothing writes to it: treat it as read-only)
    mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    x = torch.frombuffer(mm, dtype=torch.uint8, count=n * c * h * w, offset=x_off).view(n, c, h, w)
    y = torch.from_numpy(np.frombuffer(mm, dtype="<i8", count=n, offset=y_off).astype(np.int64))
    data = ImageData(x, y, list(header["classes"]), header["name"], header["location"])
    data.store = MappedStore(path, mm, header, fd, x_off, (n, c, h, w))
    return data


def write_cache(path: Path, header: dict, n: int, shape: tuple[int, int, int], labels: np.ndarray,
                chunks: Iterator[np.ndarray]) -> None:
    """Write a cache file (n images of `shape`, given in `chunks` of uint8 [k, C, H, W], in order)
    to a tmp file beside `path`, fsync, rename: all or nothing. The caller holds the build lock."""
    for stale in path.parent.glob(path.name + ".tmp.*"):  # a killed build's leftovers (we hold the lock)
        stale.unlink(missing_ok=True)
    blob = json.dumps(header, sort_keys=True).encode("utf-8")
    c, h, w = shape
    x_off, y_off, size = _layout(len(blob), n, c, h, w)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + len(blob).to_bytes(8, "little") + blob)
            f.write(b"\0" * (x_off - f.tell()))
            written = 0
            for part in chunks:
                if part.dtype != np.uint8 or tuple(part.shape[1:]) != (c, h, w):
                    raise DarhtError(f"{path}: a decoded chunk has {part.dtype} {tuple(part.shape)}")
                f.write(np.ascontiguousarray(part).data)
                written += len(part)
            if written != n:
                raise DarhtError(f"{path}: decoded {written} images, expected {n}")
            f.write(b"\0" * (y_off - f.tell()))
            f.write(np.ascontiguousarray(labels, dtype="<i8").data)
            assert f.tell() == size
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
