"""Small shared helpers: atomic writes, devices, git revision, seeding."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from darht.errors import DarhtError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename over `path`: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # on disk before the rename: a power cut leaves old or new, not empty
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, w)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str = "JSON record") -> Any:
    """The parsed JSON of a file the user named; any problem (a directory, missing, not UTF-8,
    unreadable, invalid JSON) is one DarhtError line naming the file."""
    p = Path(path)
    if p.is_dir():
        raise DarhtError(f"{p}: is a directory, not a {what} file")
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DarhtError(f"{what} not found: {p}") from None
    except UnicodeDecodeError:
        raise DarhtError(f"{p}: not UTF-8 text, so not a {what}") from None
    except OSError as e:
        raise DarhtError(f"{p}: cannot be read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DarhtError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> a device that exists here (DarhtError otherwise)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DarhtError(f"unknown device '{name}'; choose from: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DarhtError(f"device '{name}': CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DarhtError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DarhtError(f"device '{name}': MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise DarhtError(f"unsupported device '{name}'; choose from: auto, cpu, cuda, cuda:N, mps")
    return device


def check_output(path: str | Path | None, kind: str = "file", what: str = "--out") -> None:
    """Before any work: `path` can be written as a `kind` ('file' or 'dir').

    Refuses a file path that is a directory (or a dir path that is a file), a path below an
    existing file, and a first existing ancestor that is not a writable directory. Creates nothing.
    """
    if path is None or path == "":
        return
    p = Path(path)
    if kind == "file" and p.is_dir():
        raise DarhtError(f"{what} {p} is a directory; give a file name")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise DarhtError(f"{what} {p} is an existing file; give a directory")
    parent = p if kind == "dir" else p.parent
    anc = parent.absolute()
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise DarhtError(f"{what} {p}: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise DarhtError(f"{what} {p}: {anc} is not writable")


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def staged_dir(out: str | Path, force: bool) -> Iterator[Path]:
    """A temporary directory beside `out`, renamed to `out` when the block ends without error (a
    crash leaves `out` as it was, and a hidden .tmp directory at worst): the directory form of
    `atomic_write`. With `force` an existing non-empty `out` is moved aside first and removed only
    once the new one is in place; without it, DarhtError."""
    out = Path(out)
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 directories; give the usual permissions
    try:
        yield tmp
        _publish(tmp, out.absolute(), force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, out: Path, force: bool) -> None:
    if out.is_dir() and not any(out.iterdir()):
        os.replace(tmp, out)  # rename(2) replaces an empty directory
        return
    if not out.exists():
        os.rename(tmp, out)
        return
    if not force:
        raise DarhtError(f"--out {out} exists and is not empty; choose another directory or pass --force")
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rename(out, old / out.name)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
