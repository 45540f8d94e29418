"""Checkpoint io: weights in safetensors, the spec that rebuilds the model in a JSON sidecar.

`save_model(model, "run/best")` writes run/best.safetensors (the state dict; the sidecar's JSON
is also stored in its header metadata under "darht") and run/best.json ({format, version, spec,
normalization, meta}), each atomically. `load_model(path)` rebuilds the model from the spec and
loads the weights. Foreign checkpoints (.pt/.pth/.ckpt/.bin) are read only through
torch.load(weights_only=True), so a pickle that would run code is refused; their spec comes from
the caller (name=..., num_classes=... or guessed from the classifier's shape).

Key layouts accepted: darht's own; `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes;
a state dict nested under 'state_dict' / 'model_state_dict' / 'model'; an inner timm model's keys
without the adapter's `model.` prefix (and RobustBench's extra `model.` prefixes); RobustBench's
DeepMind WRN-70-16 (Gowal2020Uncovering) loads into `wrn-70-16` as is. RobustBench checkpoints by
their RobustBench name (architecture, normalization, unused groups) go through
darht.models.robustbench.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from darht.errors import DarhtError
from darht.models.zoo import create_model, unwrap
from darht.utils import atomic_write, atomic_write_json

FORMAT = "darht-model"
VERSION = 1
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
RUN_DIR_NAMES = ("best", "last", "model")  # looked for in this order in a directory
_HEAD_KEYS = ("logits.weight", "fc.weight", "linear.weight", "head.weight", "classifier.weight")


# ---- saving -----------------------------------------------------------------------------------
def _stem(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def _with(stem: Path, suffix: str) -> Path:
    return Path(str(stem) + suffix)  # not with_suffix: 'run/model.v2' keeps its '.v2'


def _normalization(model: nn.Module) -> dict | None:
    """The outermost `mean`/`std` input buffers (BN statistics are named running_*)."""
    bufs = dict(model.named_buffers())
    for m_key in sorted((k for k in bufs if k.split(".")[-1] == "mean"), key=lambda k: k.count(".")):
        s_key = m_key[: -len("mean")] + "std"
        if s_key in bufs:
            return {"mean": bufs[m_key].flatten().tolist(), "std": bufs[s_key].flatten().tolist()}
    return None


def _saveable(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors; safetensors refuses tensors sharing memory, so later sharers
    (tied weights, views into one storage) are cloned."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        t = v.detach()
        if t.device.type == "meta":
            raise DarhtError(f"cannot save '{k}': it has no data (meta device)")
        t = t.cpu()
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
        out[k] = t.contiguous()
    return out


def save_model(model: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Write `<stem>.safetensors` and `<stem>.json`; returns the .safetensors path."""
    model = unwrap(model)  # saved keys carry no wrapper prefix
    spec = getattr(model, "spec", None)
    if not spec:
        raise DarhtError("save_model: the model has no .spec (build it with darht.models.create_model)")
    stem = _stem(path)
    sidecar = {"format": FORMAT, "version": VERSION, "spec": spec, "normalization": _normalization(model),
               "meta": meta or {}}
    try:
        text = json.dumps(sidecar)
    except (TypeError, ValueError) as e:
        raise DarhtError(f"save_model: spec/meta must be JSON-serializable: {e}") from None
    tensors = _saveable(model.state_dict())
    st_path = _with(stem, ".safetensors")
    atomic_write(st_path, lambda tmp: save_file(tensors, tmp, metadata={"darht": text}))
    atomic_write_json(_with(stem, ".json"), sidecar)
    return st_path


# ---- reading ----------------------------------------------------------------------------------
def resolve_checkpoint(path: str | Path) -> Path:
    """The weights file meant by `path`: a file, a stem, a .json sidecar or a run directory."""
    p = Path(path)
    if p.is_dir():
        for n in RUN_DIR_NAMES:
            if (p / f"{n}.safetensors").is_file():
                return p / f"{n}.safetensors"
        raise DarhtError(f"no model in directory {p} (looked for {', '.join(n + '.safetensors' for n in RUN_DIR_NAMES)})")
    if p.suffix == ".json":
        p = _with(_stem(p), ".safetensors")
    if p.is_file():
        return p
    if _with(p, ".safetensors").is_file():
        return _with(p, ".safetensors")
    raise DarhtError(f"model file not found: {path}")


def read_meta(path: str | Path) -> dict:
    """The sidecar of a darht checkpoint: {format, version, spec, normalization, meta}.

    Read from `<stem>.json`, else from the safetensors header; {} for a foreign checkpoint.
    """
    file = resolve_checkpoint(path)
    side = _with(_stem(file) if file.suffix == ".safetensors" else file.with_suffix(""), ".json")
    if side.is_file():
        try:
            data = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            raise DarhtError(f"cannot read {side}: {e}") from None
        if not isinstance(data, dict):
            raise DarhtError(f"{side} is not a darht model sidecar")
        return data
    if file.suffix == ".safetensors":
        try:
            with safe_open(str(file), framework="pt") as f:
                text = (f.metadata() or {}).get("darht")
            return json.loads(text) if text else {}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise DarhtError(f"cannot read {file}: not a valid safetensors file ({e})") from None
    return {}


def _torch_load(file: Path, map_location: Any) -> Any:
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights only" in msg.lower() or "weights_only" in msg.lower():
            # torch names the offending global on one line of its long message; keep only that
            why = next((ln.strip() for ln in msg.splitlines() if "GLOBAL" in ln or "Unsupported" in ln),
                       "it references objects other than tensors")
            raise DarhtError(f"{file}: darht refuses to unpickle code from a checkpoint ({why}); "
                             "only tensors/plain containers are read (torch.load weights_only=True); "
                             "re-save it as a state dict of tensors") from None
        raise DarhtError(f"cannot read {file}: corrupt or not a PyTorch checkpoint ({e})") from None
    except Exception as e:  # zip/EOF/runtime errors from a truncated or foreign file
        raise DarhtError(f"cannot read {file}: corrupt or not a PyTorch checkpoint ({e})") from None


def read_state_dict(path: str | Path, map_location: Any = "cpu") -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, spec stored inside the file or None) from a .safetensors or a torch file."""
    file = resolve_checkpoint(path)
    if file.suffix == ".safetensors":
        try:
            return load_file(str(file), device=str(torch.device(map_location))), None
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise DarhtError(f"cannot read {file}: not a valid safetensors file ({e})") from None
    if file.suffix not in TORCH_SUFFIXES:
        raise DarhtError(f"unsupported checkpoint type '{file.suffix}' ({file}); use .safetensors or "
                         f"{', '.join(TORCH_SUFFIXES)}")
    obj = _torch_load(file, map_location)
    if not isinstance(obj, Mapping):
        raise DarhtError(f"{file} does not hold a state dict (got {type(obj).__name__})")
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise DarhtError(f"{file} holds no tensors")
    return state, dict(spec) if spec else None


# ---- fitting keys -----------------------------------------------------------------------------
def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _fit_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Of a few prefix variants of the checkpoint's keys, the one closest to the model's keys."""
    state = _strip_wrappers(state)
    variants = [state,
                {(k[6:] if k.startswith("model.") else k): v for k, v in state.items()},
                {"model." + k: v for k, v in state.items()}]
    return min(variants, key=lambda s: len(set(s) ^ expected))


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, foreign: bool = False,
               new_head_ok: bool = False, what: str = "checkpoint") -> None:
    """Load `state` into `model`, exactly; raise DarhtError naming the keys that do not fit.

    Always tolerated: missing BatchNorm `num_batches_tracked`. `foreign`: missing input mean/std
    buffers (the checkpoint's network normalized outside; the model keeps its own). `new_head_ok`:
    classifier weights that are missing or of another shape stay freshly initialised.
    """
    expected = model.state_dict()
    state = _fit_keys(state, set(expected))
    head_keys: set[str] = set()
    if new_head_ok and hasattr(model, "classifier_head"):
        ids = {id(p) for p in model.classifier_head.parameters()}
        head_keys = {k for k, p in model.named_parameters() if id(p) in ids}
    mismatch = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    state = {k: v for k, v in state.items() if not (k in head_keys and k in mismatch)}
    mismatch = [k for k in mismatch if k not in head_keys]

    def tolerated(k: str) -> bool:
        last = k.split(".")[-1]
        return last == "num_batches_tracked" or k in head_keys or (foreign and last in ("mean", "std"))

    missing = [k for k in expected if k not in state and not tolerated(k)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected or mismatch:
        name = (getattr(model, "spec", None) or {}).get("name", type(model).__name__)
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if mismatch:
            parts.append("shape mismatch: " + _few([f"{k} {tuple(state[k].shape)} vs model "
                                                     f"{tuple(expected[k].shape)}" for k in mismatch], 3))
        raise DarhtError(f"{what} does not fit model '{name}': " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Local weights into a freshly built model (create_model's pretrained_file): input
    normalization and a differently sized classifier may be missing from the file."""
    state, _ = read_state_dict(path)
    load_state(model, state, foreign=True, new_head_ok=True, what=f"pretrained_file {path}")


def _guess_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    hits = [v for k, v in state.items() if k.endswith(_HEAD_KEYS) and v.ndim == 2]
    return int(hits[-1].shape[0]) if hits else None


def load_model(path: str | Path, *, name: str | None = None, num_classes: int | None = None,
               in_chans: int | None = None, img_size: int | None = None, kwargs: dict | None = None,
               map_location: Any = "cpu") -> nn.Module:
    """Rebuild and load a model (returned in eval mode on `map_location`).

    The spec comes from the darht sidecar (or a 'spec' entry of a torch checkpoint); every
    argument given here overrides it (`kwargs` updates the spec's kwargs).
    """
    file = resolve_checkpoint(path)
    state, embedded = read_state_dict(file, map_location)
    base = dict(read_meta(file).get("spec") or embedded or {})
    foreign = not base
    spec = {"name": name or base.get("name"),
            "num_classes": num_classes if num_classes is not None else base.get("num_classes"),
            "in_chans": in_chans if in_chans is not None else base.get("in_chans", 3),
            "img_size": img_size if img_size is not None else base.get("img_size", 32),
            "kwargs": {**dict(base.get("kwargs") or {}), **dict(kwargs or {})}}
    if not spec["name"]:
        raise DarhtError(f"{file} has no darht sidecar (.json) saying which model it is; pass the model "
                         "name (e.g. name='wrn-70-16')")
    if spec["num_classes"] is None:
        spec["num_classes"] = _guess_num_classes(_strip_wrappers(state))
        if spec["num_classes"] is None:
            raise DarhtError(f"cannot tell the number of classes of {file}; pass num_classes")
    model = create_model(spec["name"], spec["num_classes"], in_chans=spec["in_chans"],
                         img_size=spec["img_size"], **spec["kwargs"])
    load_state(model, state, foreign=foreign, what=str(file))
    return model.to(map_location).eval()
