"""Training checkpoints (`last.pt`), RNG state capture, and the run's record files.

A checkpoint must load with `torch.load(weights_only=True)`: it holds only tensors, numbers,
strings, None, lists and dicts. Python's and numpy's RNG states (tuples with a numpy array)
are converted to lists/tensors for that reason.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from darht.errors import DarhtError
from darht.utils import atomic_write

LAST = "last.pt"
METRICS = "metrics.jsonl"


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


# ---- checkpoint files ---------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomic: written to a temporary file in the same directory, then renamed over `path`."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


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
def append_metrics(run_dir: str | Path, record: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / METRICS
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, epoch: int) -> None:
    """Drop records of epochs after `epoch`: a crash between the metrics line and the checkpoint
    leaves a line for an epoch that the resumed run trains again."""
    p = Path(run_dir) / METRICS
    if not p.is_file():
        return
    keep = [r for r in read_metrics(run_dir) if r.get("epoch", 0) <= epoch]
    text = "".join(json.dumps(r) + "\n" for r in keep)
    atomic_write(p, lambda tmp: Path(tmp).write_text(text))
