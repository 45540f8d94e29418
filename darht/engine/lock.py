"""One writer per run directory: an exclusive `flock` on `<run_dir>/.lock`.

The kernel drops a flock when the process that holds it exits, however it exits (SIGKILL, a
crash, a power loss), so a dead run never leaves a stale lock behind; the file itself stays (with
nothing in it) and is harmless. While held, the file holds the holder's pid so that a second
process can say who is in the way.

    with RunLock(run_dir):
        ...  # the only darht process writing run_dir

If this process created `run_dir` (and any missing parents) and nothing but the lock file was
written into it when the lock is released, the directories are removed again: a start that fails
(a bad config, Ctrl-C while loading data) leaves no empty run directory behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from darht.engine import distributed as ddp
from darht.errors import DarhtError

LOCK_NAME = ".lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created: list[Path] = []  # directories this process made, outermost first

    # ---- context manager -------------------------------------------------------------------------
    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ---- acquire / release -----------------------------------------------------------------------
    def acquire(self) -> None:
        for _ in range(20):  # retried only if the lock file is replaced under us (see _opened)
            self._make_dirs()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # the directory vanished in between (another process removed it)
                continue
            except OSError as e:
                raise DarhtError(f"cannot create {self.path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(fd)
                os.close(fd)
                raise DarhtError(f"{self.run_dir} is in use by another darht process (pid {pid}); "
                                 "wait for it or choose another --out") from None
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    os.close(fd)
                    raise
                print(f"warning: cannot lock {self.path} ({e.strerror}): nothing stops a second darht "
                      "process from writing this run directory", file=sys.stderr, flush=True)
            if not _opened(fd, self.path):  # we locked a file that was unlinked meanwhile: retry
                os.close(fd)
                continue
            self.fd = fd
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:  # a full disk: the lock holds all the same, only the pid is missing
                pass
            return
        raise DarhtError(f"cannot lock {self.path}: the lock file keeps being replaced")

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if self.created and self._only_lock_inside():
                os.unlink(self.path)  # still locked: a process that opened this file retries
                for d in reversed(self.created):
                    d.rmdir()
            else:
                os.ftruncate(fd, 0)  # no pid of a finished process left in the file
        except OSError:
            pass
        finally:
            self.created = []
            os.close(fd)  # releases the flock

    # ---- helpers -----------------------------------------------------------------------------------
    def _make_dirs(self) -> None:
        if self.run_dir.is_dir():
            return
        missing = []
        d = self.run_dir
        while not d.exists():
            missing.append(d)
            if d.parent == d:
                break
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
                self.created.append(d)
            except FileExistsError:  # made by another process in between: not ours to remove
                if not d.is_dir():
                    raise DarhtError(f"cannot create run directory {self.run_dir}: {d} is not a directory") from None
            except OSError as e:
                raise DarhtError(f"cannot create run directory {self.run_dir}: {e.strerror}") from None
        if not self.run_dir.is_dir():
            raise DarhtError(f"cannot create run directory {self.run_dir}: it exists and is not a directory")

    def _only_lock_inside(self) -> bool:
        try:
            return [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]
        except OSError:
            return False


def _opened(fd: int, path: Path) -> bool:
    """Is `fd` still the file at `path`? (The lock's file may be unlinked by its releasing creator.)"""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(fd: int) -> str:
    """The pid the holder wrote (it writes it right after locking, so wait a moment for it)."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        if text.isdigit():
            return text
        if time.monotonic() > deadline:
            return "unknown"
        time.sleep(0.02)


@contextmanager
def rank0_lock(run_dir: Path, info: ddp.DistInfo) -> Iterator[None]:
    """Rank 0 locks the run directory (creating it); every rank learns whether that worked, so a
    refused start ends all ranks at once instead of leaving them waiting in a collective."""
    lock, err = None, None
    if info.is_main:
        lock = RunLock(run_dir)
        try:
            lock.acquire()
        except DarhtError as e:
            err = str(e)
    if info.enabled:
        err = ddp.broadcast_object(err, info)
    if err is not None:
        raise DarhtError(err)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
