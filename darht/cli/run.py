"""`darht run`, `darht report` and `darht data`.

The pipeline, report and data modules are imported inside the command functions, not at the
top: they pull in torch, and every `darht ...` start-up (`darht --help` included) builds this
module's parsers.
"""

from __future__ import annotations

import argparse
from typing import Any

from darht.errors import DarhtError


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


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from darht.report.build import write_report

    if not Path(args.run_dir).is_dir():
        raise DarhtError(f"run directory not found: {args.run_dir}")
    path = write_report(args.run_dir)
    print(path.read_text())
    print(f"report written to {path}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from darht.data import dataset_info, download

    if args.data_cmd == "cache":
        return _cmd_cache(args)
    if args.data_cmd == "fetch-teacher":
        return _cmd_fetch_teacher(args)
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


def _cmd_fetch_teacher(args: argparse.Namespace) -> int:
    from darht.data.download import fetch_teacher
    from darht.utils import check_output

    if args.out is not None:
        check_output(args.out, "file", "--out")
    path = fetch_teacher(args.name, args.url, out=args.out, sha256=args.sha256, dataset=args.dataset)
    print(f"{args.name} is in {path}; use it as --teacher {args.name}={path}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from darht.cli.args import parse_data_args
    from darht.data.cache import build_cache, cache_dir
    from darht.data.mapped import read_header
    from darht.utils import check_output

    kw = parse_data_args(args.data_arg)
    check_output(args.out or str(cache_dir()), "dir", "--out")
    splits = ["train", "test"] if args.split == "all" else [args.split]
    for split in splits:
        path, built = build_cache(args.name, split, args.root, args.out, force=args.force, **kw)
        h = read_header(path)
        size = path.stat().st_size / 2**30
        print(f"{args.name} {split}: {h['n']} images of {'x'.join(map(str, h['shape']))}, {size:.2f} GiB, "
              f"{'built' if built else 'up to date'}: {path}")
    if args.out is not None and cache_dir(args.out).absolute() != cache_dir().absolute():
        print(f"training finds it with DARHT_CACHE={cache_dir(args.out)} (data.stream: true, or automatic by size)")
    return 0


def _add_data(sub: Any) -> None:
    p = sub.add_parser("data", help="data sets: info, download, cache; fetch-teacher (RobustBench weights)")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    q = dsub.add_parser("info", help="size, classes, shape and location of a data set")
    q.add_argument("name")
    q.add_argument("--root")
    q = dsub.add_parser("download", help="download with checksum verification and safe extraction")
    q.add_argument("name")
    q.add_argument("--root", help="target directory (default ~/.cache/darht)")
    q.add_argument("--url", help="override the source URL (file:// works)")
    q.add_argument("--sha256", help="expected SHA-256 of the archive")
    q = dsub.add_parser("fetch-teacher", help="download a RobustBench teacher's weights (checked against "
                                              "darht's table of names), for --teacher NAME=PATH")
    q.add_argument("name", help="RobustBench model name, e.g. Chen2021LTD_WRN34_20")
    q.add_argument("--url", required=True, help="where the checkpoint is (direct link, mirror or file://)")
    q.add_argument("--out", help="target .pt file (default $DARHT_TEACHERS or ~/.cache/darht/teachers/"
                                 "DATASET/NAME.pt)")
    q.add_argument("--sha256", help="expected SHA-256 of the file")
    q.add_argument("--dataset", choices=["cifar10", "cifar100"],
                   help="which table, for a name that is in both (e.g. Rice2020Overfitting)")
    q = dsub.add_parser("cache", help="decode a data set once into a memory-mapped uint8 cache for streaming "
                                      "(data larger than RAM; every DDP rank maps it)")
    q.add_argument("name")
    q.add_argument("--root")
    q.add_argument("--out", help="cache directory (default $DARHT_CACHE, else ~/.cache/darht/cache)")
    q.add_argument("--split", choices=["train", "test", "all"], default="train")
    q.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="loader option, e.g. size=32 (part of the cache's identity, as data.kwargs)")
    q.add_argument("--force", action="store_true", help="rebuild even if an up-to-date cache exists")
    p.set_defaults(func=cmd_data)


def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="Markdown/CSV tables and plots from a run directory's records")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run a pipeline config: teachers -> students -> evaluation -> report")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)


VERBS = {"run": _add_run, "report": _add_report, "data": _add_data}


def add_parsers(sub: Any, verbs: list[str] | None = None) -> None:
    """Register this module's sub-parsers (`verbs`: only those, in that order; default all)."""
    for name in VERBS if verbs is None else verbs:
        VERBS[name](sub)
