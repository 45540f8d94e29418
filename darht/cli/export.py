"""`darht export`: a training run's model as a deterministic checkpoint plus a model card.

`darht export RUN_DIR --out DIR` writes DIR/model.safetensors + DIR/model.json (a darht-student with
its MC dropout switched off: dropout 0, one sample; its MC mode is kept in the sidecar and the card)
and DIR/card.json (darht.evaluation.card describes the schema). Every number of the card is measured
by `darht evaluate`'s own code path (darht.cli.evaluate.run_evaluation) on the argv the card
records, so `darht evaluate --card DIR` can re-run exactly that. DIR appears whole or not at all.

torch and the evaluation modules are imported inside `cmd_export`, not at the top: every `darht ...`
start-up builds this module's parser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from darht.cli.args import _parse_attack_args, parse_data_args, parse_eps, positive_int
from darht.cli.evaluate import parse_evaluate_argv, run_evaluation

DEFAULT_ATTACKS = "autoattack"  # AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square


def _eps_text(text: str) -> str:
    parse_eps(text)  # the same check (and the same float) as `darht evaluate --eps`
    return text


def _check_flags(args: argparse.Namespace) -> None:
    """Bad flags fail before any loading (the same checks `darht evaluate` makes)."""
    from darht.attacks.args import check_attack_args_map
    from darht.registry import ATTACKS
    from darht.utils import resolve_device

    for name in (a for a in args.attacks.split(",") if a):
        ATTACKS.get(name)
    check_attack_args_map(_parse_attack_args(args.attack_arg))
    parse_data_args(args.data_arg)
    resolve_device(args.device)


def cmd_export(args: argparse.Namespace) -> int:
    from darht.evaluation import card as cards
    from darht.models.student import switch_off_mc
    from darht.utils import staged_dir
    from darht.evaluation.spec import DEFAULT_EOT
    from darht.models.io import load_model, read_meta, save_model
    from darht.utils import resolve_device

    _check_flags(args)
    source = cards.read_run_dir(args.run_dir, args.weights)
    cards.check_target(args.out, args.force)
    device = str(resolve_device(args.device))
    cfg_data = source["config"]["data"]
    data_kwargs = {**dict(cfg_data.get("kwargs") or {}), **parse_data_args(args.data_arg)}
    data_cfg = {"name": cfg_data["name"], "split": args.split, "root": args.root or cfg_data.get("root"),
                "kwargs": data_kwargs}
    attacks = [a for a in args.attacks.split(",") if a]
    final = Path(args.out) / f"{cards.MODEL_STEM}.safetensors"

    sidecar = read_meta(source["checkpoint"])
    model = load_model(source["checkpoint"])
    mc_mode = switch_off_mc(model)
    meta = {**sidecar.get("meta", {}), "exported_from": str(source["checkpoint"])}
    if mc_mode is not None:
        meta["mc_mode"] = mc_mode
    with staged_dir(args.out, args.force) as tmp:
        weights = save_model(model, tmp / cards.MODEL_STEM, meta=meta)
        runs = [("deterministic", None, None, None)]
        if mc_mode is not None:
            runs.append(("mc", "mc", args.eot or DEFAULT_EOT, args.draws))
        evaluations, records, data = {}, {}, None
        for i, (label, mode, eot, draws) in enumerate(runs):
            common: dict[str, Any] = dict(data=data_cfg, attacks=attacks, attack_args=list(args.attack_arg),
                                          eps=args.eps, n=args.n, seed=args.seed, batch_size=args.batch_size,
                                          device=device, mode=mode, eot=eot, draws=draws)
            argv = cards.evaluate_argv(final, **common)
            run_argv = cards.evaluate_argv(weights, **common) + (["--no-progress"] if args.no_progress else [])
            print(f"evaluating the {label} model ({i + 1}/{len(runs)}): {cards.shell_command(argv)}",
                  file=sys.stderr, flush=True)
            record, data = run_evaluation(parse_evaluate_argv(run_argv), command=cards.shell_command(argv))
            face = cards.face_of(record, mode)
            evaluations[face] = cards.evaluation_entry(record, face, argv, device)
            records[face] = record
        card = cards.build_card(model=model, weights=weights, mc_mode=mc_mode, data=data, data_cfg=data_cfg,
                                eps_text=args.eps, evaluations=evaluations, records=records, source=source,
                                sidecar=sidecar)
        cards.write_card(tmp, card)
    out = Path(args.out)
    print(f"model card of {source['checkpoint']} (Linf eps {args.eps}, n={card['numbers'][0]['n']}, "
          f"seed {args.seed}):")
    for num in card["numbers"]:
        tol = "" if num["tolerance"] == 0 else f"  (randomized: re-measurements agree within +-{num['tolerance']:.4f})"
        print(f"  {num['name']:<40} {100 * num['value']:6.2f}%{tol}")
    for face, notes in card["checks"].items():
        for note in notes:
            print(f"check ({face}): {note}")
    print(f"model written to {out / weights.name} (+ {weights.with_suffix('.json').name}); card written to "
          f"{out / cards.CARD_NAME}; re-check it with: darht evaluate --card {out}")
    return 0


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="a run's model as a deterministic checkpoint plus a model card "
                       "(clean and AutoAttack accuracy, with the commands that reproduce them)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (darht train / distill --out)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="write DIR/model.safetensors, DIR/model.json and DIR/card.json here")
    p.add_argument("--weights", choices=["best", "last"], help="which weights of the run (default: best, else last)")
    p.add_argument("--split", default="test", help="the split the card's numbers are measured on (default test)")
    p.add_argument("--root", help="data directory (default: the run config's data.root)")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="data set option, over the run config's data.kwargs (repeatable)")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help="comma-separated attacks (default: autoattack, AutoAttack standard; cheaper: apgd-ce, "
                        "or pgd with --attack-arg pgd.steps=20; '' for clean accuracy only)")
    p.add_argument("--attack-arg", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                   help="e.g. --attack-arg autoattack.n_iter=20 (recorded in the card's commands)")
    p.add_argument("--eps", type=_eps_text, default="8/255", help="L-inf radius in [0,1] pixels (default 8/255)")
    p.add_argument("--n", type=positive_int, default=1000, help="examples measured (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="chooses the examples and seeds the attacks (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--eot", type=positive_int, default=None,
                   help="MC student: EOT samples per gradient step of its randomized numbers (default 20)")
    p.add_argument("--draws", type=positive_int, default=20,
                   help="MC student: stochastic predictions judging each example (default 20)")
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty --out directory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_export)


VERBS = {"export": _add_export}


def add_parsers(sub: Any, verbs: list[str] | None = None) -> None:
    """Register this module's sub-parsers (`verbs`: only those, in that order; default all)."""
    for name in VERBS if verbs is None else verbs:
        VERBS[name](sub)
