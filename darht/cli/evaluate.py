"""`darht evaluate` (with `--card`: re-measure a model card's numbers; `darht compare` and
`darht transfer` are in darht.cli.compare). `run_evaluation` is the one evaluation path: `darht export` measures a card's
numbers with it, and `--card` re-measures them with it.

torch and the data, model, attack and evaluation modules are imported inside the functions that
use them, not at the top: every `darht ...` start-up (`darht --help` included) builds this
module's parsers, and must not pay for torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from darht.cli.args import (_parse_attack_args, check_model_fits, parse_data_args, parse_eps,
                            parse_int_list, positive_int, write_record)
from darht.errors import DarhtError


def load_eval_model(args: argparse.Namespace, num_classes: int, in_chans: int, img_size: int):
    """(model, its record entry: darht.evaluation.records.model_info)."""
    from darht.evaluation.records import model_info
    from darht.models.io import load_model, read_meta

    if args.checkpoint:
        model = load_model(args.checkpoint, name=args.model)
        return model, model_info(args.checkpoint, model, read_meta(args.checkpoint))
    if args.model and args.weights:
        model = load_model(args.weights, name=args.model, num_classes=num_classes, in_chans=in_chans,
                           img_size=img_size)
        return model, model_info(args.weights, model, name=args.model)
    if args.model:
        from darht.models import create_model

        print(f"note: no weights given: evaluating a randomly initialised {args.model}", file=sys.stderr)
        model = create_model(args.model, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
        return model, model_info(None, model, name=args.model)
    raise DarhtError("evaluate needs --checkpoint PATH, or --model NAME [--weights PATH]")


def _set_mc_mode(model: Any, mc: bool, mc_mode: Any = None) -> None:
    """Switch a DARHT student between MC dropout and its deterministic mode. An exported student
    (`darht export`: dropout 0, its MC mode in the sidecar's meta.mc_mode) gets that MC mode back."""
    students = [m for m in model.modules() if hasattr(m, "deterministic")]
    if not students:
        raise DarhtError("--mode applies only to DARHT students; this model has no MC dropout head")
    if mc and mc_mode is not None:
        from darht.models.student import restore_mc_mode

        restore_mc_mode(model, mc_mode)
    for m in students:
        m.deterministic = not mc


class _ArgvParser(argparse.ArgumentParser):
    """The `darht evaluate` parser for an argv that a program holds (a model card's): a bad argv is
    a DarhtError, not argparse's usage message and SystemExit."""

    def error(self, message: str):  # type: ignore[override]
        raise DarhtError(f"not a valid `darht evaluate` command line: {message}")


def parse_evaluate_argv(argv: list[str]) -> argparse.Namespace:
    """`darht evaluate` arguments (argv[0] == "evaluate") as `darht evaluate` would parse them."""
    if not argv or argv[0] != "evaluate":
        raise DarhtError(f"not a `darht evaluate` command line: {' '.join(argv)[:80]}")
    p = _ArgvParser(prog="darht evaluate")
    _evaluate_arguments(p)
    args = p.parse_args(argv[1:])
    if args.card:
        raise DarhtError("a card's command line cannot itself name a card (--card)")
    return args


def run_evaluation(args: argparse.Namespace, command: str | None = None) -> tuple[dict, Any]:
    """What `darht evaluate` measures for `args`: (evaluation record, the data set). Export and
    `--card` verification call this too, so a card's numbers are `darht evaluate`'s numbers.
    `command`: the record's command line (None: this process's)."""
    import torch

    from darht.data import load_dataset
    from darht.evaluation.records import data_info, evaluation_record
    from darht.evaluation.robustness import evaluate
    from darht.evaluation.spec import EvalSpec
    from darht.registry import ATTACKS
    from darht.utils import check_output, resolve_device

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
        _set_mc_mode(model, args.mode == "mc", meta.get("mc_mode"))
        if meta.get("mc_mode") is not None:
            meta["spec"] = dict(model.spec)  # the architecture as evaluated (MC mode restored or not)
    spec = EvalSpec(attacks=attacks, eps=args.eps, n=args.n, trials=args.trials, seed=args.seed,
                    batch_size=args.batch_size, attack_args=attack_args,
                    eot=args.eot, draws=args.draws, eot_sweep=args.eot_sweep or [],
                    faces=args.mode is None, progress=not args.no_progress)
    torch.manual_seed(args.seed)
    # the stored images (uint8 for the image data sets): evaluate converts each batch on the device
    record = evaluation_record(evaluate(model, data.x, data.y, spec, device), spec=spec, model=meta,
                               data=data_info(args.data, args.split, len(data)), command=command)
    return record, data


def cmd_evaluate(args: argparse.Namespace) -> int:
    from darht.report.tables import markdown_table, sweep_markdown

    if args.card:
        return cmd_verify_card(args)
    record, _ = run_evaluation(args)
    meta = record["model"]
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


# with --card, the flags that may be given: they change where data is read and where the work
# runs, never a number's settings (those are the card's)
_CARD_FLAGS = ("card", "root", "device", "no_progress", "out", "func", "cmd")


def cmd_verify_card(args: argparse.Namespace) -> int:
    """`darht evaluate --card DIR`: re-measure every number of a model card; exit 0 if all
    reproduce, 1 if one does not."""
    from pathlib import Path

    from darht.evaluation import card as cards
    from darht.evaluation import card_check
    from darht.utils import check_output

    p = _ArgvParser(prog="darht evaluate")
    _evaluate_arguments(p)
    given = [k for k, v in vars(args).items() if k not in _CARD_FLAGS and v != p.get_default(k)]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise DarhtError(f"--card re-runs the card's own settings; {flags} cannot be given with it "
                         "(only --root, --device, --no-progress and --out)")
    check_output(args.out, "file")
    path, card = card_check.read_card(args.card)
    if args.device != p.get_default("device"):
        from darht.utils import resolve_device

        resolve_device(args.device)
    faces = list(card["evaluations"])

    def rerun(argv: list[str]) -> tuple[dict, str]:
        a = parse_evaluate_argv(argv)
        print(f"re-measuring {faces[len(done)]} ({len(done) + 1}/{len(faces)}): {cards.shell_command(argv)}",
              file=sys.stderr, flush=True)
        record, _ = run_evaluation(a, command=cards.shell_command(argv))
        done.append(a)
        return record, cards.face_of(record, a.mode)

    done: list = []
    report = card_check.verify_card(card, Path(path).parent, rerun, root=args.root,
                                    device=None if args.device == p.get_default("device") else args.device,
                                    progress=not args.no_progress)
    report["card"] = str(path)
    th = card.get("threat_model", {})
    print(f"card {path}: {card['model'].get('name')} on {card.get('data', {}).get('name')}/"
          f"{card.get('data', {}).get('split')}, {th.get('norm', 'Linf')} eps {th.get('eps_text', th.get('eps'))}")
    width = max([len(r["name"]) for r in report["numbers"]] + [6])
    print(f"{'number':<{width}}  {'recorded':>10}  {'re-measured':>11}  {'tolerance':>10}  verdict")
    for r in report["numbers"]:
        got = "-" if r["remeasured"] is None else f"{r['remeasured']:.6f}"
        tol = "exact" if r["tolerance"] == 0 else f"+-{r['tolerance']:.4f}"
        verdict = ("ok (exact)" if r["exact"] else "ok") if r["ok"] else "DOES NOT REPRODUCE"
        print(f"{r['name']:<{width}}  {r['recorded']:>10.6f}  {got:>11}  {tol:>10}  {verdict}")
    for note in report["notes"]:
        print(f"note: {note}")
    if report["reproduced"]:
        print(f"all {len(report['numbers'])} numbers reproduce")
    else:
        for problem in report["problems"]:
            print(f"does not reproduce: {problem}")
    write_record(args.out, report)
    return 0 if report["reproduced"] else 1


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="clean / robust / W-Robust accuracy under attacks; --card: re-check "
                       "a model card's numbers")
    _evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--out", help="write the JSON record here (with --card: the verification report)")
    p.add_argument("--card", metavar="CARD",
                   help="re-measure every number of a model card (DIR/card.json or DIR, from `darht export`) "
                        "on the same examples with the same settings; exit 1 if one does not reproduce")
    p.add_argument("--no-progress", action="store_true")


VERBS = {"evaluate": _add_evaluate}


def add_parsers(sub: Any, verbs: list[str] | None = None) -> None:
    """Register this module's sub-parsers (`verbs`: only those, in that order; default all)."""
    for name in VERBS if verbs is None else verbs:
        VERBS[name](sub)
