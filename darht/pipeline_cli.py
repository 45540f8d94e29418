"""CLI verbs for the experiments: `darht transfer`, `darht report`, `darht run`."""

from __future__ import annotations

import argparse
from typing import Any

from darht.errors import DarhtError


def cmd_transfer(args: argparse.Namespace) -> int:
    import torch

    from darht.cli import check_model_fits, parse_data_args, write_record
    from darht.data import load_dataset
    from darht.evaluation.transfer import select_teachers, student_transfer, transfer_matrix
    from darht.methods.teachers import load_attackable
    from darht.models.io import load_model
    from darht.registry import ATTACKS
    from darht.report.tables import transfer_markdown
    from darht.utils import check_output, resolve_device

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
    x, y = data.float_x().to(device), data.y.to(device)
    kw = {"attack": args.attack, "eps": args.eps, "n": args.n, "batch_size": args.batch_size, "seed": args.seed,
          "draws": args.draws}
    models = {n: load_attackable(n, num_classes=data.num_classes, in_chans=c, img_size=h).to(device) for n in names}
    torch.manual_seed(args.seed)
    rec: dict[str, Any] = {"kind": "transfer", "data": args.data, **{k: v for k, v in kw.items() if k != "batch_size"}}
    if args.select:
        if not 1 <= args.select <= len(names):
            raise DarhtError(f"--select {args.select}: choose between 1 and {len(names)} of the candidates")
        rec["teacher_matrix"] = transfer_matrix(models, x, y, **kw)
        rec["selection"] = select_teachers(rec["teacher_matrix"]["matrix"], args.select)
    else:
        if not args.student:
            raise DarhtError("transfer needs --student with --teacher (or use --select)")
        student = load_model(args.student).to(device).eval()
        check_model_fits(student, data, f"{args.data}/{args.split}")
        rec["students"] = {args.student: student_transfer(student, models, x, y, **kw)}
        if len(models) >= 2:
            rec["teacher_matrix"] = transfer_matrix(models, x, y, **kw)
    print(transfer_markdown(rec))
    if "selection" in rec:
        sel = rec["selection"]
        print(f"\nproposed teacher set (lowest mean pairwise transfer {100 * sel['mean_pairwise_transfer']:.1f}%):")
        for t in sel["selected"]:
            print(f"  {t}")
    write_record(args.out, rec)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from darht.report.build import write_report

    if not Path(args.run_dir).is_dir():
        raise DarhtError(f"run directory not found: {args.run_dir}")
    path = write_report(args.run_dir)
    print(path.read_text())
    print(f"report written to {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from darht.pipeline import Pipeline, load_pipeline
    from darht.utils import check_output

    cfg = load_pipeline(args.config, args.overrides)
    check_output(cfg.out, "dir")
    if args.no_progress:
        cfg.progress = False
    report = Pipeline(cfg).run()
    print(report.read_text())
    print(f"report written to {report}")
    return 0


def add_verbs(sub: Any) -> None:
    from darht.cli import parse_eps, positive_int

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

    p = sub.add_parser("report", help="Markdown/CSV tables and plots from a run directory's records")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("run", help="run a pipeline config: teachers -> students -> evaluation -> report")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)

