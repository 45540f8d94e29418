"""The `darht` command: train | distill | evaluate | compare | transfer | report | run | data.

User-input problems (DarhtError) print one line and exit with code 2; argparse does the same
for bad flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
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


# ---------------------------------------------------------------- train / distill
def _add_run_flags(p: argparse.ArgumentParser) -> None:
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
    from darht.config import load_yaml, make_config, set_path

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

    from darht.config import check_run

    cfg = make_config(raw, args.overrides)
    check_run(cfg)
    check_output(cfg.out, "dir")
    resolve_device(cfg.device)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from darht.engine.trainer import train

    cfg = _run_config(args, {"model.name": args.model})
    summary = train(cfg, resume=args.resume)
    if summary:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from darht.engine.trainer import train

    extra = {"model.name": args.student, "teachers": args.teacher or None,
             "teacher_natural": args.teacher_natural,
             "method": args.method or ("darht" if not args.config else None)}
    if args.teacher_bf16:
        extra["teacher_bf16"] = True
    args.method = None
    cfg = _run_config(args, extra)
    from darht.registry import METHODS

    if not getattr(METHODS.get(cfg.method), "needs_teachers", False):
        raise DarhtError(f"method '{cfg.method}' is not a distillation method; use `darht train`")
    if not cfg.teachers:
        raise DarhtError("distill needs at least one --teacher")
    summary = train(cfg, resume=args.resume)
    if summary:
        print(json.dumps(summary, indent=2, default=str))
    return 0


# ---------------------------------------------------------------- evaluate
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


def load_eval_model(args: argparse.Namespace, num_classes: int, in_chans: int, img_size: int):
    from darht.models.io import load_model, read_meta

    if args.checkpoint:
        model = load_model(args.checkpoint, name=args.model)
        meta = read_meta(args.checkpoint)
        return model, {"checkpoint": str(args.checkpoint), "spec": meta.get("spec", getattr(model, "spec", None)),
                       **meta.get("meta", {})}
    if args.model and args.weights:
        model = load_model(args.weights, name=args.model, num_classes=num_classes, in_chans=in_chans,
                           img_size=img_size)
        return model, {"checkpoint": str(args.weights), "name": args.model}
    if args.model:
        from darht.models import create_model

        print(f"note: no weights given: evaluating a randomly initialised {args.model}", file=sys.stderr)
        return create_model(args.model, num_classes=num_classes, in_chans=in_chans, img_size=img_size), \
            {"name": args.model, "checkpoint": None}
    raise DarhtError("evaluate needs --checkpoint PATH, or --model NAME [--weights PATH]")


def _set_mc_mode(model: Any, mc: bool) -> None:
    """Switch a DARHT student between MC dropout and its deterministic mode."""
    students = [m for m in model.modules() if hasattr(m, "deterministic")]
    if not students:
        raise DarhtError("--mode applies only to DARHT students; this model has no MC dropout head")
    for m in students:
        m.deterministic = not mc


def parse_int_list(text: str) -> list[int]:
    """'1,5,20' -> [1, 5, 20] (each >= 1)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got '{text}'")
    return values


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from darht.data import load_dataset
    from darht.evaluation.robustness import EvalSpec, evaluate, markdown_table
    from darht.evaluation.sweep import sweep_markdown
    from darht.registry import ATTACKS
    from darht.utils import check_output, git_revision, resolve_device

    attacks = [a for a in args.attacks.split(",") if a] if args.attacks is not None else None
    for name in attacks or []:
        ATTACKS.get(name)  # unknown names fail before any loading
    from darht.attacks.args import check_attack_args_map

    attack_args = _parse_attack_args(args.attack_arg)
    check_attack_args_map(attack_args)
    check_output(args.out, "file")
    device = resolve_device(args.device)
    data = load_dataset(args.data, args.split, args.root, **parse_data_args(args.data_arg))
    c, h, _ = data.shape
    model, meta = load_eval_model(args, data.num_classes, c, h)
    check_model_fits(model, data, f"{args.data}/{args.split}")
    if args.mode in ("mc", "deterministic"):
        _set_mc_mode(model, args.mode == "mc")
    spec = EvalSpec(attacks=attacks, eps=args.eps, n=args.n, trials=args.trials, seed=args.seed,
                    batch_size=args.batch_size, attack_args=attack_args,
                    eot=args.eot, draws=args.draws, eot_sweep=args.eot_sweep or [],
                    faces=args.mode is None, progress=not args.no_progress)
    torch.manual_seed(args.seed)
    x = data.float_x()
    record = evaluate(model, x, data.y, spec, device)
    record = {"kind": "evaluation", "model": meta, "data": {"name": args.data, "split": args.split,
              "size": len(data)}, "git": git_revision(), "command": " ".join(sys.argv), **record}
    title = f"{meta.get('checkpoint') or meta.get('name')} on {args.data}/{args.split}: eps={args.eps:.4f}, " \
            f"n={record['n']}, trials={args.trials}"
    if record["randomized"]:
        title += f"; randomized: EOT {record['eot']}, {record['draws']} draws per example"
    print(title)
    print(markdown_table(record))
    if record.get("eot_sweep"):
        print("\nEOT sweep (robust accuracy on the same examples):")
        print(sweep_markdown(record["eot_sweep"]))
    checks = record["checks"] + [f"deterministic face: {c}" for c in
                                 (record.get("faces") or {}).get("deterministic", {}).get("checks", [])]
    for note in checks:
        print(f"check: {note}")
    write_record(args.out, record)
    return 0


# ---------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    from darht.evaluation.stats import compare_groups, comparison_markdown, parse_record_args

    from darht.utils import check_output

    check_output(args.out, "file")
    groups = parse_record_args(args.records)
    result = compare_groups(groups, [args.attack] if args.attack else None)
    print(comparison_markdown(result))
    write_record(args.out, {"kind": "comparison", **result})
    return 0


# ---------------------------------------------------------------- data
def cmd_data(args: argparse.Namespace) -> int:
    from darht.data import dataset_info, download

    if args.data_cmd == "info":
        info = dataset_info(args.name, args.root)
        for k, v in info.items():
            if k == "classes" and isinstance(v, list) and len(v) > 12:
                v = ", ".join(map(str, v[:12])) + f", ... ({len(v)} in all)"
            print(f"{k}: {v}")
        return 0
    from darht.utils import check_output

    check_output(args.root, "dir", "--root")
    path = download(args.name, args.root, url=args.url, sha256=args.sha256)
    print(f"{args.name} is in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from darht import __version__

    parser = argparse.ArgumentParser(prog="darht", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"darht {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train", help="train a model (standard or adversarial training)")
    _add_run_flags(p)
    p.add_argument("--model", help="model name (darht list models: see README)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="distill a student from one or more teachers")
    _add_run_flags(p)
    p.add_argument("--student", help="student backbone model name")
    p.add_argument("--teacher", action="append", help="teacher checkpoint/run dir/model spec (repeatable)")
    p.add_argument("--teacher-natural", help="MTARD's natural (non-robust) teacher")
    p.add_argument("--teacher-bf16", action="store_true", help="run teachers in bfloat16")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="clean / robust / W-Robust accuracy under attacks")
    p.add_argument("--checkpoint", help="a checkpoint (.safetensors, run directory, or .pt)")
    p.add_argument("--model", help="model name (with --weights, or to rebuild a .pt state dict)")
    p.add_argument("--weights", help="weights for --model")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--root")
    p.add_argument("--split", default="test")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="data set option, e.g. --data-arg size=32 (repeatable)")
    p.add_argument("--attacks", help="comma-separated (default: fgsm,pgd,cw-inf,apgd-ce,square, plus apgd-dlr "
                   "for a randomized model; '' for clean only)")
    p.add_argument("--attack-arg", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                   help="e.g. --attack-arg pgd.steps=20 --attack-arg square.n_queries=1000")
    p.add_argument("--eps", type=parse_eps, default=8 / 255, help="L-inf radius in [0,1] pixels (default 8/255)")
    p.add_argument("--n", type=positive_int, default=1000, help="examples per trial (default 1000)")
    p.add_argument("--trials", type=positive_int, default=1,
                   help="seeded subsets, disjoint when n x trials fits the data (paper: 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--eot", type=positive_int, default=None,
                   help="EOT samples per gradient step for a randomized model (default 20; ignored for "
                        "deterministic models)")
    p.add_argument("--draws", type=positive_int, default=20,
                   help="stochastic predictions judging each example of a randomized model (default 20)")
    p.add_argument("--eot-sweep", type=parse_int_list, metavar="E1,E2,...",
                   help="also report robust accuracy per EOT setting (e.g. 1,5,20,50) on the same examples")
    p.add_argument("--mode", choices=["mc", "deterministic"],
                   help="DARHT student: only MC dropout or only deterministic (default: both faces)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the JSON record here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="paired tests (McNemar, bootstrap CI), Mann-Whitney U and tests "
                       "across training seeds between evaluation records")
    p.add_argument("records", nargs="+", metavar="[NAME=]RECORD",
                   help="evaluation records; NAME=PATH groups several records (training seeds) of one method; "
                        "the first method is the baseline")
    p.add_argument("--attack", help="compare on this attack only (default: every common one)")
    p.add_argument("--out")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("data", help="data sets: info, download")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    q = dsub.add_parser("info", help="size, classes, shape and location of a data set")
    q.add_argument("name")
    q.add_argument("--root")
    q = dsub.add_parser("download", help="download with checksum verification and safe extraction")
    q.add_argument("name")
    q.add_argument("--root", help="target directory (default ~/.cache/darht)")
    q.add_argument("--url", help="override the source URL (file:// works)")
    q.add_argument("--sha256", help="expected SHA-256 of the archive")
    p.set_defaults(func=cmd_data)

    from darht.pipeline_cli import add_verbs  # transfer | report | run

    add_verbs(sub)
    return parser


def _user_paths(argv: list[str]) -> list[str]:
    """Every argument that could name a file: values of flags and positionals, `KEY=PATH` halves."""
    out = []
    for a in argv:
        out.append(a)
        if "=" in a:
            out.append(a.split("=", 1)[1])
    return [a for a in out if a and not a.startswith("-")]


def _is_user_path(filename: Any, argv: list[str]) -> bool:
    """True if an OSError's file is one the user named, or lies below one (a run directory)."""
    if not filename:
        return False
    f = Path(str(filename)).absolute()
    for a in _user_paths(argv):
        p = Path(a).absolute()
        if f == p or p in f.parents:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    """The one error path: DarhtError (and OSError on a path the user gave) -> one line, exit 2;
    Ctrl-C -> exit 130; any other exception is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except DarhtError as e:
        print(f"darht: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not _is_user_path(e.filename, argv) and not _is_user_path(e.filename2, argv):
            raise
        print(f"darht: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("darht: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
