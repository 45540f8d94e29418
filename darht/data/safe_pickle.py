"""Unpickling of downloaded data files without running code from them.

A pickle can call any importable function; CIFAR's batches only need dicts, lists, bytes, str,
ints and numpy arrays. This Unpickler resolves just the globals that build those and refuses any
other with a DarhtError, so a tampered download cannot run code.
"""

from __future__ import annotations

import _codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from darht.errors import DarhtError

try:  # numpy >= 2 moved numpy.core to numpy._core; pickles name either
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray, numeric as _numeric  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # protocol 2 (python 2 era) arrays: _reconstruct(ndarray, shape, typecode) + __setstate__
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    # protocol 5 arrays: _frombuffer(buffer, dtype, shape, order)
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    # python 3 writes bytes as _codecs.encode(str, 'latin1') under protocol 2
    ("_codecs", "encode"): _codecs.encode,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, f: io.BufferedIOBase, source: str):
        super().__init__(f, encoding="bytes")  # python 2 str -> bytes, as CIFAR's keys are
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DarhtError(f"{self.source}: refusing to unpickle '{module}.{name}' "
                             f"(only plain data and numpy arrays are allowed)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise DarhtError(f"{self.source}: refusing a pickle with persistent ids")


def safe_loads(raw: bytes, source: str | Path) -> Any:
    """Unpickle `raw` (read from `source`, named in errors); DarhtError if unsafe or corrupt."""
    try:
        return _SafeUnpickler(io.BytesIO(raw), str(source)).load()
    except DarhtError:
        raise
    except Exception as e:  # corrupt pickles raise many types: UnpicklingError, EOFError, ValueError...
        raise DarhtError(f"{source}: corrupt pickle ({e.__class__.__name__}: {e})") from None
