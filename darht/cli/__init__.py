"""The `darht` command: train | distill | evaluate | compare | transfer | report | run | data | export.

User-input problems (DarhtError) print one line and exit with code 2; argparse does the same
for bad flags.

Layout: `args` (shared argument types and helpers), `train` (train, distill), `evaluate`
(evaluate; `evaluate --card` re-checks a model card), `compare` (compare, transfer), `run` (run,
report, data), `export` (export: a deterministic checkpoint plus a model card); each verb module
registers its own sub-parsers. Those modules import from `darht.cli.args`, never from this
package. torch and the heavy darht modules are imported only inside the command functions, so
that `darht --help` and argparse errors stay fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from darht import __version__
from darht.cli import compare as _compare
from darht.cli import evaluate as _evaluate
from darht.cli import export as _export
from darht.cli import run as _run
from darht.cli import train as _train
# Re-exported: every name the old single-module darht.cli defined stays importable from it.
from darht.cli.args import (_add_run_flags, _parse_attack_args, _run_config, check_model_fits,  # noqa: F401
                            parse_data_args, parse_eps, parse_int_list, positive_int, write_record)
from darht.cli.compare import cmd_compare, cmd_transfer
from darht.cli.evaluate import _set_mc_mode, cmd_evaluate, load_eval_model  # noqa: F401
from darht.cli.export import cmd_export
from darht.cli.run import cmd_data, cmd_report, cmd_run
from darht.cli.train import cmd_distill, cmd_train
from darht.errors import DarhtError

__all__ = ["main", "build_parser", "write_record", "parse_eps", "positive_int", "parse_int_list",
           "parse_data_args", "check_model_fits", "load_eval_model", "cmd_train", "cmd_distill",
           "cmd_evaluate", "cmd_compare", "cmd_transfer", "cmd_data", "cmd_report", "cmd_run", "cmd_export"]

# The order `darht --help` lists the verbs in, and the module that registers each.
_VERBS = (("train", _train), ("distill", _train), ("evaluate", _evaluate), ("compare", _compare),
          ("data", _run), ("transfer", _compare), ("report", _run), ("run", _run), ("export", _export))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="darht", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"darht {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for verb, module in _VERBS:
        module.add_parsers(sub, [verb])
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
