"""`darht train` and `darht distill`.

The trainer, the config and the method registry are imported inside the command functions (and
inside the help formatter that lists the methods), not at the top: they pull in torch, and every
`darht ...` start-up (`darht --help` included) builds this module's parsers.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from darht.cli.args import _add_run_flags, _run_config
from darht.errors import DarhtError

METHODS_PLACEHOLDER = "{methods}"


def method_list(distill: bool) -> str:
    """The registered methods `darht train` (distill=False) or `darht distill` accepts, one per
    line with its teacher roles and arguments."""
    from darht.methods.args import accepted_args
    from darht.registry import METHODS

    lines = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        if bool(cls.needs_teachers or cls.teacher_roles) != distill:
            continue
        roles = f" [teacher roles: {', '.join(cls.teacher_roles)}]" if cls.teacher_roles else ""
        args = ", ".join(accepted_args(cls)) or "(no arguments)"
        lines.append(f"  {name}{roles}: {args}")
    return "\n".join(lines)


class _MethodsHelp(argparse.RawDescriptionHelpFormatter):
    """Fills in the registered methods when the help is printed, so that building the parser (on
    every start-up) does not import torch."""

    distill = False

    def _format_text(self, text: str) -> str:
        if METHODS_PLACEHOLDER in text:
            text = text.replace(METHODS_PLACEHOLDER, method_list(self.distill))
        return super()._format_text(text)


class _DistillHelp(_MethodsHelp):
    distill = True


def _print_summary(summary: dict) -> None:
    if summary:
        print(json.dumps(summary, indent=2, default=str))


def cmd_train(args: argparse.Namespace) -> int:
    from darht.engine.trainer import train

    cfg = _run_config(args, {"model.name": args.model})
    _print_summary(train(cfg, resume=args.resume))
    return 0


def _teachers(args: argparse.Namespace) -> list[str] | dict[str, str] | None:
    """--teacher SPEC (repeatable; a method with roles takes them in its role order) or
    --teacher-role ROLE=SPEC (repeatable), not both."""
    if args.teacher and args.teacher_role:
        raise DarhtError("give the teachers either with --teacher (in role order) or with --teacher-role "
                         "ROLE=SPEC, not both")
    if not args.teacher_role:
        return args.teacher or None
    roles: dict[str, str] = {}
    for item in args.teacher_role:
        role, sep, spec = item.partition("=")
        if not sep or not role.strip() or not spec.strip():
            raise DarhtError(f"--teacher-role expects ROLE=SPEC, got '{item}'")
        if role.strip() in roles:
            raise DarhtError(f"--teacher-role: role '{role.strip()}' given twice")
        roles[role.strip()] = spec.strip()
    return roles


def cmd_distill(args: argparse.Namespace) -> int:
    from darht.engine.trainer import train
    from darht.registry import METHODS

    teachers = _teachers(args)
    if not teachers and not args.config:
        raise DarhtError("distill needs at least one --teacher")
    extra = {"model.name": args.student, "teachers": teachers,
             "method": args.method or ("darht" if not args.config else None)}
    if args.teacher_bf16:
        extra["teacher_bf16"] = True
    args.method = None
    cfg = _run_config(args, extra)
    if not METHODS.get(cfg.method).needs_teachers:
        raise DarhtError(f"method '{cfg.method}' is not a distillation method; use `darht train`")
    _print_summary(train(cfg, resume=args.resume))
    return 0


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model (standard or adversarial training)",
                       formatter_class=_MethodsHelp,
                       epilog=f"methods (--method; arguments via --set method_args.NAME=VALUE):\n{METHODS_PLACEHOLDER}")
    _add_run_flags(p)
    p.add_argument("--model", help="model name (darht list models: see README)")
    p.set_defaults(func=cmd_train)


def _add_distill(sub: Any) -> None:
    p = sub.add_parser("distill", help="distill a student from one or more teachers",
                       formatter_class=_DistillHelp,
                       epilog=f"methods (--method, default darht; arguments via --set method_args.NAME=VALUE):\n"
                              f"{METHODS_PLACEHOLDER}")
    _add_run_flags(p)
    p.add_argument("--student", help="student backbone model name")
    p.add_argument("--teacher", action="append",
                   help="teacher checkpoint/run dir/model spec, or NAME=PATH with NAME a model name or a "
                        "RobustBench name (e.g. Chen2021LTD_WRN34_20=ckpt.pt; see darht.models.robustbench) "
                        "(repeatable; a method with teacher roles takes them in its role order)")
    p.add_argument("--teacher-role", action="append", metavar="ROLE=SPEC",
                   help="a teacher in a named role of the method, e.g. --teacher-role natural=PATH (repeatable)")
    p.add_argument("--teacher-bf16", action="store_true", help="run teachers in bfloat16")
    p.set_defaults(func=cmd_distill)


VERBS = {"train": _add_train, "distill": _add_distill}


def add_parsers(sub: Any, verbs: list[str] | None = None) -> None:
    """Register this module's sub-parsers (`verbs`: only those, in that order; default all)."""
    for name in VERBS if verbs is None else verbs:
        VERBS[name](sub)
