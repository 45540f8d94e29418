"""What a pipeline (`darht run CONFIG`) declares: `PipelineConfig`, the merge of its shared
`train` keys into each stage, and the expansion of a stage over training seeds. Running the
stages is darht.pipeline's job."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from darht.config import DataConfig, load_yaml, make_config
from darht.errors import DarhtError


@dataclass
class PipelineConfig:
    name: str = "experiment"
    out: str = "runs/experiment"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    fallback_data: str | None = None        # used, with a notice, when `data` is not installed
    fallback_data_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)        # TrainConfig keys shared by every stage
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> TrainConfig keys | {checkpoint}
    students: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> TrainConfig keys (teachers by name; seeds: [..] repeats it)
    evaluation: dict[str, Any] = field(default_factory=dict)   # EvalSpec fields; split: test
    evaluate_teachers: bool = False
    transfer: dict[str, Any] | None = None  # {attack, eps, n, attack_args}; None: skip
    # the paper claims the report tests (darht.report.claims) and the criterion by which a training
    # curve counts as converged: {last: epochs, max_spread: val PGD accuracy range}; both optional
    claims: list[dict[str, Any]] = field(default_factory=list)
    convergence: dict[str, Any] | None = None
    progress: bool = True


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> PipelineConfig:
    return make_config(load_yaml(path), overrides, cls=PipelineConfig)


def expand_seeds(stages: dict[str, dict[str, Any]], kind: str = "students") -> dict[str, dict[str, Any]]:
    """A stage with `seeds: [s0, s1, ...]` becomes one stage per seed, named `NAME-s<seed>`, each
    with `seed: <seed>` (the same teachers, data and evaluation examples: only the training
    randomness differs). Order: every stage's first seed (and the stages without seeds) in the
    config's order, then every stage's second seed, and so on, so that a study stopped part-way
    has one run of each stage before it has a second of any."""
    rounds: list[dict[str, dict[str, Any]]] = [{}]
    made = 0
    for name, spec in stages.items():
        seeds = spec.get("seeds") if isinstance(spec, dict) else None
        if seeds is None:
            rounds[0][name], made = spec, made + 1
            continue
        if "seed" in spec:
            raise DarhtError(f"config: {kind}.{name}: give either seed or seeds, not both")
        if (not isinstance(seeds, list) or not seeds
                or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in seeds)
                or len(set(seeds)) != len(seeds)):
            raise DarhtError(f"config: {kind}.{name}.seeds must be a non-empty list of distinct integers >= 0, "
                             f"got {seeds!r}")
        for i, seed in enumerate(seeds):
            while len(rounds) <= i:
                rounds.append({})
            rounds[i][f"{name}-s{seed}"] = {**{k: v for k, v in spec.items() if k != "seeds"}, "seed": seed}
            made += 1
    out = {k: v for r in rounds for k, v in r.items()}
    if len(out) != made:
        raise DarhtError(f"config: {kind}: a stage name made from seeds (NAME-s<seed>) is also given explicitly")
    return out
