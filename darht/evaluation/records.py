"""Evaluation and transfer records, built in one place for the CLI verbs and the pipeline stages.

`darht evaluate --out`, `darht transfer --out` and `darht run`'s `records/*.json` hold the same
fields, whichever made them. Around the result they add what is needed to find and re-make it:

  kind         "evaluation" | "transfer"
  model        (evaluation) {checkpoint, spec, ...}: the checkpoint (None for a randomly
               initialised model), its architecture spec, and the training meta of its sidecar
               (method, epoch, val_clean, ...) when it has one; `name` when the CLI named the model
  models       (transfer) {students: {key: {checkpoint, spec}}, teachers: {key: {checkpoint, spec}}}
  data         {name, split, size}
  git          the commit of the darht source (None outside a git checkout)
  version      darht.__version__
  command      the command line of the process that made the record (a CLI verb's argv, or the
               `darht run CONFIG ...` that ran the pipeline)
  stage        the pipeline stage ("evaluation", "transfer"); None for a CLI verb
  seed, wall_time_s
  the settings: for an evaluation those evaluate() records (eps, n, trials_count, pool_limit,
               attacks, attack_args and eot as resolved for the model, draws), plus batch_size;
               for a transfer attack, eps, n, attack_args, draws
  the result fields, as darht.evaluation.robustness.evaluate / darht.evaluation.transfer give them.

An evaluation's `seed` and `wall_time_s` (the time the evaluation itself took) come from evaluate();
a transfer's `wall_time_s` is the time of the whole verb or stage. Nothing here builds a table:
tables are made only in darht.report.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from darht import __version__
from darht.utils import git_revision

if TYPE_CHECKING:
    from darht.evaluation.spec import EvalSpec

# the settings of a transfer, in record order (seed included)
TRANSFER_SETTINGS = ("attack", "eps", "n", "attack_args", "seed", "draws")


def command_line() -> str:
    """The command line of this process, as records store it."""
    return " ".join(sys.argv)


def model_info(checkpoint: Any, model: Any, sidecar: dict | None = None, **extra: Any) -> dict:
    """{checkpoint, spec, **training meta, **extra} for a record's `model`.

    `sidecar`: the checkpoint's darht sidecar (darht.models.io.read_meta), whose spec is preferred
    to the model's own and whose training meta is copied in; `extra`: e.g. name=... from the CLI.
    """
    sidecar = sidecar or {}
    return {"checkpoint": None if checkpoint is None else str(checkpoint),
            "spec": sidecar.get("spec", getattr(model, "spec", None)), **sidecar.get("meta", {}), **extra}


def data_info(name: str, split: str, size: int) -> dict:
    return {"name": name, "split": split, "size": int(size)}


def _provenance(command: str | None, stage: str | None) -> dict:
    return {"git": git_revision(), "version": __version__,
            "command": command_line() if command is None else command, "stage": stage}


def evaluation_record(result: dict, *, spec: EvalSpec, model: dict, data: dict, command: str | None = None,
                      stage: str | None = None) -> dict:
    """The evaluation record: `result` (darht.evaluation.robustness.evaluate's) with its provenance.

    `model`: model_info(...); `data`: data_info(...); `command`: None for this process's command
    line; `stage`: the pipeline stage, None for the CLI. evaluate() already records the resolved
    spec (and seed, wall_time_s); of `spec` only what it leaves out (batch_size) is added.
    """
    missing = [k for k in ("seed", "wall_time_s", "eps", "attacks") if k not in result]
    if missing:
        raise ValueError(f"evaluation_record: not an evaluate() result (no {', '.join(missing)})")
    rec = {"kind": "evaluation", "model": model, "data": data, **_provenance(command, stage)}
    rec.update(result)
    rec.setdefault("batch_size", spec.batch_size)
    return rec


def transfer_record(result: dict, *, settings: dict, models: dict, data: dict, wall_time_s: float,
                    command: str | None = None, stage: str | None = None) -> dict:
    """The transfer record: `result` ({students: ...}, teacher_matrix, selection) with its provenance.

    `settings`: attack, eps, n, attack_args, seed, draws (as passed to the transfer functions);
    `models`: {students: {key: model_info}, teachers: {key: model_info}}; `data`: data_info(...);
    `wall_time_s`: the time the verb or stage took.
    """
    missing = [k for k in TRANSFER_SETTINGS if k not in settings]
    if missing:
        raise ValueError(f"transfer_record: settings lack {', '.join(missing)}")
    rec = {"kind": "transfer", "data": data, "models": models, **_provenance(command, stage),
           "wall_time_s": round(float(wall_time_s), 3)}
    rec.update({k: settings[k] for k in TRANSFER_SETTINGS})
    rec.update(result)
    return rec
