"""`darht train` and `darht distill`.

The trainer, the config and the method registry are imported inside the command functions, not
at the top: they pull in torch, and every `darht ...` start-up (`darht --help` included) builds
this module's parsers.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from darht.cli.args import _add_run_flags, _run_config
from darht.errors import DarhtError


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


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model (standard or adversarial training)")
    _add_run_flags(p)
    p.add_argument("--model", help="model name (darht list models: see README)")
    p.set_defaults(func=cmd_train)


def _add_distill(sub: Any) -> None:
    p = sub.add_parser("distill", help="distill a student from one or more teachers")
    _add_run_flags(p)
    p.add_argument("--student", help="student backbone model name")
    p.add_argument("--teacher", action="append", help="teacher checkpoint/run dir/model spec (repeatable)")
    p.add_argument("--teacher-natural", help="MTARD's natural (non-robust) teacher")
    p.add_argument("--teacher-bf16", action="store_true", help="run teachers in bfloat16")
    p.set_defaults(func=cmd_distill)


VERBS = {"train": _add_train, "distill": _add_distill}


def add_parsers(sub: Any, verbs: list[str] | None = None) -> None:
    """Register this module's sub-parsers (`verbs`: only those, in that order; default all)."""
    for name in VERBS if verbs is None else verbs:
        VERBS[name](sub)
