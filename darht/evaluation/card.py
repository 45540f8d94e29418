"""Model cards: a model exported with every number measured on it, and how to re-measure each.

`darht export RUN_DIR --out DIR` writes DIR/model.safetensors + DIR/model.json (the deterministic
model, readable by `darht evaluate --checkpoint DIR`, `load_model(DIR)` and as a teacher) and
DIR/card.json. Every number of the card comes from an evaluation record that `darht evaluate`'s own
code path made (darht.cli.evaluate.run_evaluation on the argv stored in the card), and
`darht evaluate --card DIR` re-runs those argv lists and compares
(`darht.evaluation.card_check.verify_card`). This module builds and writes cards, card_check reads
and verifies them; neither runs an evaluation itself (the caller passes `rerun`), so there is one
evaluation path.

The schema (card_version 1) and the tolerance rule for randomized numbers (z * sqrt(2 mu~(1 - mu~) / n),
mu~ the Agresti-Coull centre, z at `CONFIDENCE`) are written out in docs/MODEL-CARD.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shlex
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from statistics import NormalDist
from typing import Any

from darht import __version__
from darht.errors import DarhtError
from darht.utils import atomic_write_json, git_revision

CARD_VERSION = 1
CARD_NAME = "card.json"
MODEL_STEM = "model"
CONFIDENCE = 0.999
SELECTION = ("the first n of torch.randperm(size, generator=torch.Generator().manual_seed(seed)) over "
             "the examples of the split, sorted (all of them when n >= size): "
             "darht.evaluation.spec.trial_indices with trials=1")
_PACKAGES = ("torch", "torchvision", "pyautoattack", "safetensors", "numpy", "scipy", "timm")
# the settings of an evaluation that a re-run must reproduce before its numbers are compared
SETTINGS = ("face", "randomized", "attacks", "attack_args", "eot", "draws", "eps", "n", "seed", "trials_count",
            "batch_size", "data")


# ---- the run directory --------------------------------------------------------------------------
def read_run_dir(path: str | Path, weights: str | None = None) -> dict:
    """{run_dir, checkpoint, config} of a training run directory (DarhtError if it is not one).

    `weights`: "best" or "last"; None: best, else last (as `load_model(run_dir)` picks).
    """
    from darht.config import load_yaml
    from darht.models.io import RUN_DIR_NAMES, resolve_checkpoint

    d = Path(path)
    if not d.exists():
        raise DarhtError(f"run directory not found: {d}")
    if not d.is_dir():
        raise DarhtError(f"{d} is not a directory; export takes a training run directory")
    if not (d / "config.yaml").is_file():
        raise DarhtError(f"{d} is not a darht run directory (no config.yaml)")
    config = load_yaml(d / "config.yaml")
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict) or not config["data"].get("name"):
        raise DarhtError(f"{d / 'config.yaml'} is not a darht run config (no data.name)")
    if weights is None:
        try:
            ckpt = resolve_checkpoint(d)
        except DarhtError:
            raise DarhtError(f"{d}: no checkpoint in the run directory (looked for "
                             f"{', '.join(n + '.safetensors' for n in RUN_DIR_NAMES[:2])})") from None
    else:
        ckpt = d / f"{weights}.safetensors"
        if not ckpt.is_file():
            raise DarhtError(f"{d}: no {weights} checkpoint ({ckpt.name} not found)")
    return {"run_dir": str(d), "checkpoint": ckpt, "config": config}


def evaluate_argv(checkpoint: str | Path, *, data: dict, attacks: list[str], attack_args: list[str], eps: str,
                  n: int, seed: int, batch_size: int, device: str, mode: str | None = None,
                  eot: int | None = None, draws: int | None = None) -> list[str]:
    """The `darht evaluate` argv (without "darht") of one evaluation of the card, every setting explicit.

    data: {name, split, root, kwargs}; attack_args: "ATTACK.KEY=VALUE" items as given by the user;
    mode "mc": the MC face of an exported darht-student (with its eot and draws).
    """
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", data["name"], "--split", data["split"]]
    if data.get("root"):
        argv += ["--root", str(data["root"])]
    for k, v in (data.get("kwargs") or {}).items():
        argv += ["--data-arg", f"{k}={json.dumps(v)}"]  # JSON is YAML: --data-arg reads it back as is
    argv += ["--attacks", ",".join(attacks), "--eps", eps, "--n", str(n), "--trials", "1", "--seed", str(seed),
             "--batch-size", str(batch_size)]
    for item in attack_args:
        argv += ["--attack-arg", item]
    if mode is not None:
        argv += ["--mode", mode]
    if eot is not None:
        argv += ["--eot", str(eot)]
    if draws is not None:
        argv += ["--draws", str(draws)]
    return argv + ["--device", device]


def shell_command(argv: list[str]) -> str:
    return "darht " + shlex.join(argv)


def rerun_argv(argv: list[str], checkpoint: str | Path, *, root: str | None = None, device: str | None = None,
               progress: bool = True) -> list[str]:
    """A card's argv pointed at `checkpoint` (the card's own directory), with the flags that do not
    change a number (data root, device, progress) replaced as asked."""
    out = list(argv)
    for flag, value in (("--checkpoint", str(checkpoint)), ("--root", root), ("--device", device)):
        if value is None:
            continue
        if flag in out:
            i = out.index(flag)
            out[i + 1:i + 2] = [str(value)]
        else:
            out += [flag, str(value)]
    if not progress and "--no-progress" not in out:
        out.append("--no-progress")
    return out


# ---- numbers ------------------------------------------------------------------------------------
def face_of(record: dict, mode: str | None) -> str:
    if mode == "mc":
        return "mc"
    return "randomized" if record.get("randomized") else "deterministic"


def numbers_of(record: dict, face: str) -> dict[str, tuple[float, str]]:
    """{number name: (value, metric in words)} of an evaluation record (darht evaluate's)."""
    s = record["summary"]
    attacks = list(record.get("attacks") or [])
    out = {f"{face}.clean": (s["clean"]["mean"], "clean accuracy")}
    for a in attacks + (["worst"] if len(attacks) > 1 else []):
        what = "the per-example worst case over the attacks" if a == "worst" else a
        out[f"{face}.robust.{a}"] = (s["robust"][a]["mean"], f"robust accuracy under {what}")
    if record.get("randomized"):
        out[f"{face}.clean_strict"] = (s["clean_strict"]["mean"], "clean accuracy, all draws correct")
        for a in attacks + (["worst"] if len(attacks) > 1 else []):
            out[f"{face}.strict.{a}"] = (s["strict"][a]["mean"], f"robust accuracy under {a}, all draws correct")
        for a, v in (s.get("pyautoattack_verdict") or {}).items():
            out[f"{face}.pyautoattack_verdict.{a}"] = (v, f"robust accuracy under {a} by pyautoattack's own verdict")
    return out


def tolerance(value: float, n: int, randomized: bool, confidence: float = CONFIDENCE) -> float:
    """How far a re-measurement may lie from `value` (module docstring); 0.0 for a deterministic number."""
    if not randomized:
        return 0.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    mu = (value * n + 2) / (n + 4)
    return z * math.sqrt(2 * mu * (1 - mu) / n)


def settings_of(record: dict, face: str) -> dict:
    """The settings of an evaluation record that must agree for its numbers to be comparable."""
    return {"face": face, "randomized": bool(record["randomized"]), "attacks": list(record["attacks"]),
            "attack_args": record["attack_args"], "eot": record["eot"], "draws": record["draws"],
            "eps": record["eps"], "n": record["n"], "seed": record["seed"],
            "trials_count": record.get("trials_count", 1), "batch_size": record.get("batch_size"),
            "data": record.get("data")}


def _plain(obj: Any) -> Any:
    """JSON round trip: what the card holds, so settings compare exactly as stored."""
    return json.loads(json.dumps(obj))


# ---- building and writing -----------------------------------------------------------------------
def software_versions() -> dict:
    out: dict[str, Any] = {"darht": __version__, "git": git_revision(), "python": sys.version.split()[0],
                           "platform": platform.platform()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def evaluation_entry(record: dict, face: str, argv: list[str], device: str) -> dict:
    """One evaluation of the card, from the record `darht evaluate`'s code path made running `argv`."""
    return {"command": shell_command(argv), "argv": list(argv), **settings_of(record, face), "device": device,
            "selection": SELECTION, "examples": record["examples"], "checks": list(record.get("checks", [])),
            "wall_time_s": record.get("wall_time_s")}


def build_card(*, model: Any, weights: Path, mc_mode: dict | None, data: Any, data_cfg: dict, eps_text: str,
               evaluations: dict[str, dict], records: dict[str, dict], source: dict, sidecar: dict) -> dict:
    """The card (module docstring), from the exported model, the data set and the evaluations.

    evaluations: {face: evaluation_entry(...)}; records: {face: its evaluation record};
    source: read_run_dir(...); sidecar: the run checkpoint's darht sidecar (read_meta).
    """
    from darht.evaluation.verdict import is_randomized

    spec = dict(model.spec)
    c, h, _ = data.shape
    first = next(iter(records.values()))
    eps = float(first["eps"])
    numbers = []
    for face, rec in records.items():
        ev = evaluations[face]
        for name, (value, metric) in numbers_of(rec, face).items():
            numbers.append({"name": name, "metric": metric, "value": value, "evaluation": face, "n": rec["n"],
                            "seed": rec["seed"], "randomized": bool(rec["randomized"]),
                            "tolerance": tolerance(value, rec["n"], bool(rec["randomized"])),
                            "command": ev["command"]})
    return {
        "card_version": CARD_VERSION,
        "kind": "model-card",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"weights": weights.name, "sidecar": weights.with_suffix(".json").name, "sha256": sha256(weights),
                  "spec": spec, "name": spec.get("name"), "kwargs": spec.get("kwargs", {}),
                  "params": int(sum(p.numel() for p in model.parameters())),
                  "randomized": bool(is_randomized(model)), "mc_mode": mc_mode},
        "data": {"name": data_cfg["name"], "split": data_cfg["split"], "size": len(data),
                 "shape": [c, h, data.shape[2]], "img_size": h, "in_chans": c, "num_classes": data.num_classes, "classes": list(data.classes),
                 "root": data_cfg.get("root"), "kwargs": dict(data_cfg.get("kwargs") or {})},
        "threat_model": {"norm": "Linf", "eps": eps, "eps_text": eps_text, "eps_255": eps * 255},
        "evaluations": evaluations,
        "numbers": numbers,
        "tolerance": {"rule": "deterministic numbers: exact; randomized: |re-measured - recorded| <= "
                              "z * sqrt(2 m (1 - m) / n), m = (n * recorded + 2) / (n + 4), z the two-sided "
                              "normal quantile of `confidence` (a binomial bound on the recorded n)",
                      "confidence": CONFIDENCE, "z": NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)},
        "checks": {face: list(ev["checks"]) for face, ev in evaluations.items()},
        "training": {"run_dir": source["run_dir"], "checkpoint": str(source["checkpoint"]),
                     "config": source["config"], "meta": sidecar.get("meta", {})},
        "software": software_versions(),
    }


def check_target(out: str | Path, force: bool) -> None:
    """Before any work: DIR can be written, and is absent, empty, or `force` replaces it."""
    from darht.utils import check_output

    check_output(out, "dir")
    p = Path(out)
    if p.is_dir() and any(p.iterdir()) and not force:
        raise DarhtError(f"--out {p} exists and is not empty; choose another directory or pass --force")


def write_card(directory: str | Path, card: dict) -> Path:
    path = Path(directory) / CARD_NAME
    atomic_write_json(path, card)
    return path


# ---- reading and verifying ----------------------------------------------------------------------
