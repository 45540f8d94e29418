"""`darht compare` (statistical tests between evaluation records) and `darht transfer`
(adversarial transferability, teacher selection).

torch and the heavy darht modules are imported inside the command functions (see darht.cli).
"""

from __future__ import annotations

import argparse
from typing import Any

from darht.cli.args import check_model_fits, parse_data_args, parse_eps, positive_int, write_record
from darht.errors import DarhtError


def cmd_compare(args: argparse.Namespace) -> int:
    from darht.evaluation.comparable import parse_record_args
    from darht.evaluation.stats import compare_groups
    from darht.report.comparison import comparison_markdown
    from darht.utils import check_output

    check_output(args.out, "file")
    groups = parse_record_args(args.records)
    result = compare_groups(groups, [args.attack] if args.attack else None)
    print(comparison_markdown(result))
    write_record(args.out, {"kind": "comparison", **result})
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    import time

    import torch

    from darht.data import load_dataset
    from darht.evaluation.records import data_info, model_info, transfer_record
    from darht.evaluation.transfer import select_teachers, student_transfer, transfer_matrix
    from darht.models.io import load_model
    from darht.models.teachers import load_attackable
    from darht.registry import ATTACKS
    from darht.report.tables import transfer_markdown
    from darht.utils import check_output, resolve_device

    start = time.time()
    ATTACKS.get(args.attack)
    check_output(args.out, "file")
    device = resolve_device(args.device)
    names = args.candidates if args.select else args.teacher
    if not names:
        raise DarhtError("transfer needs --teacher T (repeatable) with --student S, or --select J CANDIDATE...")
    if args.select and not 1 <= args.select <= len(names):
        raise DarhtError(f"--select {args.select}: choose between 1 and {len(names)} of the candidates")
    if not args.select and not args.student:
        raise DarhtError("transfer needs --student with --teacher (or use --select)")
    data = load_dataset(args.data, args.split, args.root, **parse_data_args(args.data_arg))
    c, h, _ = data.shape
    x, y = data.x.to(device), data.y.to(device)  # uint8 stays uint8: converted per batch on the device
    settings = {"attack": args.attack, "eps": args.eps, "n": args.n, "attack_args": None, "seed": args.seed,
                "draws": args.draws}
    kw = {**settings, "batch_size": args.batch_size}
    models = {n: load_attackable(n, num_classes=data.num_classes, in_chans=c, img_size=h).to(device) for n in names}
    infos: dict[str, dict] = {"students": {}, "teachers": {n: model_info(n, m) for n, m in models.items()}}
    torch.manual_seed(args.seed)
    result: dict[str, Any] = {}
    if args.select:
        result["teacher_matrix"] = transfer_matrix(models, x, y, **kw)
        result["selection"] = select_teachers(result["teacher_matrix"]["matrix"], args.select)
    else:
        student = load_model(args.student).to(device).eval()
        check_model_fits(student, data, f"{args.data}/{args.split}")
        infos["students"][args.student] = model_info(args.student, student)
        result["students"] = {args.student: student_transfer(student, models, x, y, **kw)}
        if len(models) >= 2:
            result["teacher_matrix"] = transfer_matrix(models, x, y, **kw)
    rec = transfer_record(result, settings=settings, models=infos, data=data_info(args.data, args.split, len(data)),
                          wall_time_s=time.time() - start)
    print(transfer_markdown(rec))
    if "selection" in rec:
        sel = rec["selection"]
        print(f"\nproposed teacher set (lowest mean pairwise transfer {100 * sel['mean_pairwise_transfer']:.1f}%):")
        for t in sel["selected"]:
            print(f"  {t}")
    write_record(args.out, rec)
    return 0


def _add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="paired tests (McNemar, bootstrap CI), Mann-Whitney U and tests "
                       "across training seeds between evaluation records")
    p.add_argument("records", nargs="+", metavar="[NAME=]RECORD",
                   help="evaluation records; NAME=PATH groups several records (training seeds) of one method; "
                        "the first method is the baseline")
    p.add_argument("--attack", help="compare on this attack only (default: every common one)")
    p.add_argument("--out")
    p.set_defaults(func=cmd_compare)


def _add_transfer(sub: Any) -> None:
    p = sub.add_parser("transfer", help="adversarial transferability student->teachers; teacher selection")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--root")
    p.add_argument("--split", default="test")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE", help="data set option")
    p.add_argument("--student", help="student checkpoint / run directory")
    p.add_argument("--teacher", action="append", default=[], help="teacher checkpoint / run dir (repeatable)")
    p.add_argument("--select", type=positive_int, metavar="J", help="propose the J candidates with lowest mutual transfer")
    p.add_argument("candidates", nargs="*", help="with --select: candidate teachers")
    p.add_argument("--attack", default="pgd")
    p.add_argument("--eps", type=parse_eps, default=8 / 255)
    p.add_argument("--n", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--seed", type=int, default=0, help="draws the --n examples, and seeds the attacks")
    p.add_argument("--draws", type=positive_int, default=20,
                   help="stochastic predictions per example for a randomized model (verdict rule)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out")
    p.set_defaults(func=cmd_transfer)


VERBS = {"compare": _add_compare, "transfer": _add_transfer}


def add_parsers(sub: Any, verbs: list[str] | None = None) -> None:
    """Register this module's sub-parsers (`verbs`: only those, in that order; default all)."""
    for name in VERBS if verbs is None else verbs:
        VERBS[name](sub)
