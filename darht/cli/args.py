"""Argument types and helpers shared by the `darht` verbs.

Imports of darht modules that pull in torch, numpy or yaml stay inside the functions that need
them: this module is imported on every `darht ...` start-up, `darht --help` included, and must
cost no more than argparse.
"""

from __future__ import annotations

import argparse
from typing import Any

from darht.errors import DarhtError


def write_record(path: str | None, record: dict) -> None:
    """`--out PATH`: write the JSON record atomically and say where."""
    if path:
        from darht.utils import atomic_write_json

        atomic_write_json(path, record)
        print(f"record written to {path}")


def parse_eps(text: str) -> float:
    """'8/255' or '0.031' -> float."""
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            value = float(a) / float(b)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: '{text}'") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"eps must be in [0, 1] (pixel units, e.g. 8/255), got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def parse_int_list(text: str) -> list[int]:
    """'1,5,20' -> [1, 5, 20] (each >= 1)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got '{text}'")
    return values


def parse_data_args(items: list[str]) -> dict[str, Any]:
    """--data-arg KEY=VALUE (repeatable) -> loader keyword arguments, values read as YAML."""
    from darht.config import parse_override

    out: dict[str, Any] = {}
    for item in items:
        keys, value = parse_override(item)
        out[".".join(keys)] = value
    return out


def _parse_attack_args(items: list[str]) -> dict[str, dict[str, Any]]:
    from darht.config import parse_override

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        keys, value = parse_override(item)
        if len(keys) != 2:
            raise DarhtError(f"--attack-arg expects ATTACK.KEY=VALUE, got '{item}'")
        out.setdefault(keys[0], {})[keys[1]] = value
    return out


def check_model_fits(model: Any, data: Any, where: str) -> None:
    """The model's recorded input shape and class count match the data (before any work)."""
    spec = getattr(model, "spec", None) or {}
    c, h, w = data.shape
    if spec.get("num_classes", data.num_classes) != data.num_classes:
        raise DarhtError(f"the model has {spec['num_classes']} classes, {where} has {data.num_classes}")
    want_c, want_h = spec.get("in_chans", c), spec.get("img_size", h)
    if (want_c, want_h) != (c, h):
        raise DarhtError(f"the model takes {want_c}x{want_h}x{want_h} images, {where} has {c}x{h}x{w}; "
                         "evaluate it on the data it was trained on (or resize with --data-arg size=N)")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags `darht train` and `darht distill` share (each maps onto a TrainConfig key)."""
    p.add_argument("--config", help="YAML config (a TrainConfig); flags and --set override it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--data", help="data set name (fashion-mnist, cifar10, digits, synthetic, ...)")
    p.add_argument("--root", help="data directory")
    p.add_argument("--method", help="training method")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run directory")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--no-progress", action="store_true")


def _run_config(args: argparse.Namespace, extra: dict[str, Any]) -> Any:
    """The TrainConfig of a train/distill command line: --config, then the flags, then --set;
    checked (run, output directory, device) before any work."""
    from darht.config import check_run, load_yaml, make_config, set_path

    raw = load_yaml(args.config) if args.config else {}
    flags = {
        "data.name": args.data, "data.root": args.root, "method": args.method, "epochs": args.epochs,
        "batch_size": args.batch_size, "optim.lr": args.lr, "seed": args.seed, "out": args.out,
        "device": args.device, "amp": args.amp, "channels_last": args.channels_last,
        "compile": args.compile, **extra,
    }
    if args.no_progress:
        flags["progress"] = False
    for key, value in flags.items():
        if value is not None:
            set_path(raw, key.split("."), value)
    from darht.utils import check_output, resolve_device

    cfg = make_config(raw, args.overrides)
    check_run(cfg)
    check_output(cfg.out, "dir")
    resolve_device(cfg.device)
    return cfg
