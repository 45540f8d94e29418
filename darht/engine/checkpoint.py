"""Training checkpoints (`last.pt`), RNG state capture, and the run's record files.

A checkpoint must load with `torch.load(weights_only=True)`: it holds only tensors, numbers,
strings, None, lists and dicts. Python's and numpy's RNG states (tuples with a numpy array)
are converted to lists/tensors for that reason.

Crash safety: last.pt is the commit point of a run. It is written to a temporary file, synced to
disk and only then renamed over the old one, so a crash, a SIGKILL or a full disk never leaves a
partial last.pt. metrics.jsonl gets one line per epoch in a single synced append; a line torn by a
crash mid-append is skipped by `read_metrics` and dropped by `truncate_metrics` on resume.
"""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from darht.errors import DarhtError
from darht.utils import atomic_write

LAST = "last.pt"
METRICS = "metrics.jsonl"
RUN_FILES = (LAST, METRICS, "config.yaml", "last.safetensors", "last.json", "best.safetensors", "best.json")


# ---- RNG states -------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every global RNG the training touches: torch CPU, CUDA (all devices), numpy, python."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- disk full -----------------------------------------------------------------------------------
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")


def is_disk_full(exc: BaseException) -> bool:
    """An error (or one it was raised from) that says the disk or the user's quota is full: an
    OSError with ENOSPC/EDQUOT, or a library's error that quotes one (safetensors does)."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return True
        if any(t in str(e).lower() for t in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _no_space_left(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _fsync_path(path: str | Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- checkpoint files ---------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomic and durable: written to a temporary file in the same directory, synced, then renamed
    over `path` (a failure removes the temporary file and leaves the old `path` as it was).
    A full disk raises OSError(ENOSPC)."""
    path = Path(path)

    def write(tmp: str) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:
            # torch's writer reports a short write as "unexpected pos ...", without the errno;
            # look at the file system before the temporary file is removed (and frees space)
            if _no_space_left(path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
            raise
        _fsync_path(tmp)  # delayed-allocation file systems may only report ENOSPC here

    atomic_write(path, write)
    try:
        _fsync_path(path.parent, directory=True)  # the rename itself survives a power loss
    except OSError:
        pass


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DarhtError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or a pickle that would run code
        raise DarhtError(f"cannot read checkpoint {path}: {str(e).splitlines()[0] if str(e) else e}") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise DarhtError(f"{path} is not a darht training checkpoint")
    return state


def to_cpu(obj: Any) -> Any:
    """Copy tensors to CPU (so a checkpoint written on a GPU loads anywhere)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_cpu(v) for v in obj]
    return obj


# ---- metrics.jsonl -----------------------------------------------------------------------------
def _write_all(fd: int, data: bytes) -> None:
    """One write call (a short write, e.g. on a nearly full disk, continues; the next one fails)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Append one line with a single write, then fsync. If the write fails (a full disk), the
    file is cut back to its old length: no torn line is left behind by an error."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(Path(run_dir) / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def _parse_metrics(p: Path) -> tuple[list[dict], int]:
    """(records, number of lines that are not a JSON object: a line torn by a crash mid-append)."""
    records, bad = [], 0
    for line in p.read_bytes().decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            r = None
        if isinstance(r, dict):
            records.append(r)
        else:
            bad += 1
    return records, bad


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of metrics.jsonl, one per epoch; a torn line (a crash mid-append) is skipped."""
    p = Path(run_dir) / METRICS
    if not p.is_file():
        return []
    return _parse_metrics(p)[0]


def truncate_metrics(run_dir: str | Path, epoch: int) -> int:
    """Repair metrics.jsonl for a run that continues after `epoch`: drop records of later epochs
    (a crash between the metrics line and the checkpoint leaves a line for an epoch that the
    resumed run trains again) and lines that do not parse (torn by a crash mid-append).
    Returns the number of torn lines dropped; the file is rewritten (atomically) only if needed."""
    p = Path(run_dir) / METRICS
    if not p.is_file():
        return 0
    records, bad = _parse_metrics(p)
    keep = [r for r in records if r.get("epoch", 0) <= epoch]
    if bad == 0 and len(keep) == len(records):
        return 0
    text = "".join(json.dumps(r) + "\n" for r in keep)
    atomic_write(p, lambda tmp: Path(tmp).write_text(text))
    return bad


def remove_stale_temporaries(run_dir: str | Path) -> list[str]:
    """Temporary files of atomic writes that a killed process left (`.<name>.<random>.tmp`). Only
    the holder of the run's lock may call this: nobody else is writing the directory."""
    removed = []
    try:
        entries = list(Path(run_dir).iterdir())
    except OSError:
        return removed
    for p in entries:
        n = p.name
        if n.startswith(".") and n.endswith(".tmp") and any(n.startswith(f".{f}.") for f in RUN_FILES) \
                and p.is_file():
            try:
                p.unlink()
                removed.append(n)
            except OSError:
                pass
    return removed
