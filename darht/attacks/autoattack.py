"""Adapters over pyautoattack 0.2.0 (the AutoAttack reference code): APGD-CE/DLR/T, FAB-T, Square
and the standard and rand (EOT) ensembles.

Every call goes through `AutoAttack.run_standard_evaluation`, so each attack only works on the
examples still robust and a returned x_adv differs from x only where the model is fooled. Around
the call we put the model in eval mode, stop its weights from requiring grad (FAB calls
`.backward()`), restore the global RNG state (the attacks reseed torch), restore any trace
function (its dynamic-defense check calls `sys.settrace(None)`), and silence its output.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from darht.attacks.core import (AttackOutput, check_inputs, draw_logits, eval_mode, fp32, frozen_params,
                                preserved_rng, project_linf)
from darht.errors import DarhtError
from darht.registry import ATTACKS

VERSIONS = ("standard", "rand", "custom")
# attacks_to_run names of pyautoattack -> the least number of classes each can handle
MIN_CLASSES = {"apgd-ce": 2, "apgd-dlr": 3, "apgd-t": 4, "fab": 2, "fab-t": 2, "square": 2}
# DLR divides by (z_(1) - z_(3)); targeted DLR by (z_(1) - (z_(3) + z_(4)) / 2), so 3 and 4 classes
_WHY = {3: "the DLR loss uses the 3rd largest logit",
        4: "the targeted DLR loss uses the 4th largest logit"}
# settings the adapters may change, beyond eps/seed/version
TUNABLE = ("n_iter", "n_restarts", "n_target_classes", "eot_iter", "batch_size")


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence pyautoattack's logger, warnings and prints unless verbose (then log to stderr)."""
    logger = logging.getLogger("auto-attack")
    disabled, level = logger.disabled, logger.level
    handler = logging.StreamHandler(sys.stderr)
    trace = sys.gettrace()
    try:
        if verbose:
            logger.setLevel(logging.DEBUG)
            logger.addHandler(handler)
            yield
        else:
            logger.disabled = True
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                yield
    finally:
        logger.removeHandler(handler)
        logger.disabled = disabled
        logger.setLevel(level)
        sys.settrace(trace)


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def _check_classes(attacks: list[str], n_cls: int) -> None:
    for a in attacks:
        need = MIN_CLASSES[a]
        if n_cls < need:
            raise DarhtError(f"{a} needs at least {need} classes ({_WHY[need]}); the model has {n_cls}")


def _configure(adversary: Any, n_cls: int, kw: dict) -> None:
    """Apply the standard-version settings that fit n_cls, then the caller's overrides."""
    targets = min(kw.get("n_target_classes", 9), n_cls - 1)
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_target_classes = targets
    if adversary.version != "rand":
        # standard version: one restart each (the constructor's custom default is 5 for apgd/fab)
        adversary.apgd.n_restarts = 1
        adversary.fab.n_restarts = 1
    if "n_iter" in kw:
        n = kw["n_iter"]
        adversary.fab.n_iter = n
        for a in (adversary.apgd, adversary.apgd_targeted):
            # APGD fixes its step-size checkpoints from n_iter in __init__: recompute them
            a.n_iter = a.n_iter_orig = n
            a.n_iter_2, a.n_iter_min = max(int(0.22 * n), 1), max(int(0.06 * n), 1)
            a.size_decr = max(int(0.03 * n), 1)
    if "n_restarts" in kw:
        adversary.apgd.n_restarts = adversary.fab.n_restarts = kw["n_restarts"]
    if "n_queries" in kw:
        adversary.square.n_queries = kw["n_queries"]
    if "eot_iter" in kw:
        adversary.apgd.eot_iter = adversary.apgd_targeted.eot_iter = kw["eot_iter"]


def _adversary(model: nn.Module, x: torch.Tensor, eps: float, version: str,
               attacks_to_run: list[str] | None, seed: int, kw: dict) -> Any:
    """A configured pyautoattack AutoAttack (call inside the guards of `_guarded`)."""
    from pyautoattack import AutoAttack  # imported here: it is slow to import and only needed here

    n_cls = _num_classes(model, x)
    adversary = AutoAttack(model, norm="Linf", eps=float(eps), version=version, device=x.device,
                           seed=seed, attacks=list(attacks_to_run) if version == "custom" else None)
    if attacks_to_run:  # a subset run with the settings of `version` (e.g. EOT 20 for rand)
        adversary.attacks_to_run = list(attacks_to_run)
    _check_classes(list(adversary.attacks_to_run), n_cls)
    _configure(adversary, n_cls, kw)
    return adversary


def _check_call(x: torch.Tensor, y: torch.Tensor | None, eps: float, version: str,
                attacks_to_run: list[str] | None, kw: dict) -> None:
    check_inputs(x, y, eps)
    if y is None:
        raise DarhtError("AutoAttack needs labels y")
    if version not in VERSIONS:
        raise DarhtError(f"unknown AutoAttack version '{version}'; choose from: {', '.join(VERSIONS)}")
    unknown = sorted(set(kw) - set(TUNABLE) - {"n_queries"})
    if unknown:
        raise DarhtError(f"unknown AutoAttack setting(s) {', '.join(unknown)}; "
                         f"choose from: {', '.join(TUNABLE + ('n_queries', 'seed', 'verbose'))}")
    if version == "custom" and not attacks_to_run:
        raise DarhtError("AutoAttack version 'custom' needs attacks_to_run")
    bad = [a for a in attacks_to_run or [] if a not in MIN_CLASSES]
    if bad:
        raise DarhtError(f"unknown AutoAttack attack(s) {', '.join(bad)}; "
                         f"choose from: {', '.join(MIN_CLASSES)}")


@contextlib.contextmanager
def _guarded(model: nn.Module, x: torch.Tensor, verbose: bool) -> Iterator[None]:
    """Eval mode, frozen weights (FAB calls .backward()), RNG restored, fp32, quiet."""
    with eval_mode(model), frozen_params(model), preserved_rng(), fp32(x), _quiet(verbose):
        yield


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
                   version: str = "standard", attacks_to_run: list[str] | None = None,
                   n_queries: int | None = None, seed: int = 0, verbose: bool = False,
                   **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Run pyautoattack; returns (x_adv, robust_mask [N] bool: still correctly classified).

    version "standard" (APGD-CE, APGD-T, FAB-T, Square), "rand" (APGD-CE, APGD-DLR with EOT 20)
    or "custom"; `attacks_to_run` (pyautoattack names) runs a subset with that version's settings.
    Robust = correctly classified on x and not fooled by any attack run (AutoAttack's verdict).
    Extra settings: n_iter, n_restarts, n_target_classes, eot_iter, batch_size (default 250).
    """
    if n_queries is not None:
        kw["n_queries"] = n_queries
    _check_call(x, y, eps, version, attacks_to_run, kw)
    if x.shape[0] == 0:
        return x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device)
    with _guarded(model, x, verbose):
        adversary = _adversary(model, x, eps, version, attacks_to_run, seed, kw)
        x_adv, y_adv = adversary.run_standard_evaluation(
            x.detach(), y.detach(), batch_size=kw.get("batch_size", 250))
    # AutoAttack's y_adv is the clean prediction, replaced by the fooled prediction where it won
    return x_adv.detach(), (y_adv == y)


# ---- strongest points, for randomized models --------------------------------------------------
# pyautoattack's `perturb` keeps a point only where the draw it saw was fooled and returns the
# clean x elsewhere; judged by fresh draws, an example fooled with probability q then counts as
# fooled with probability ~q^2. For a randomized model each attack instead hands back, for every
# example, the best point its own search found (the equivalents of `best_loss=True`).

def _square_margin_over_draws(model: nn.Module, draws: int):
    """Square's margin loss over `draws` stochastic predictions: a candidate is accepted when it
    lowers the mean margin, and an example counts as done only when every draw is fooled (the
    largest margin is <= 0); with the mean as the stopping test Square would stop at points that
    fool about half of the draws."""
    def margin_and_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = draw_logits(model, x, draws)                                   # [R, N, K]
        z_y = z.gather(2, y.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(2)
        others = z.masked_fill(F.one_hot(y, z.shape[2]).bool()[None], float("-inf")).amax(2)
        margins = z_y - others                                             # [R, N]
        return margins.amax(0), margins.mean(0)
    return margin_and_loss


def _points(adversary: Any, attack: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            eps: float, seed: int, draws: int) -> list[torch.Tensor]:
    """Every point one pyautoattack attack's search ends on, for every example of x."""
    torch.manual_seed(seed)
    if attack in ("apgd-ce", "apgd-dlr"):  # the highest-loss iterate over restarts
        adversary.apgd.loss = "ce" if attack == "apgd-ce" else "dlr"
        adversary.apgd.seed = seed
        return [adversary.apgd.perturb(x, y, best_loss=True)]
    if attack == "apgd-t":  # per target class: the highest targeted-DLR iterate
        a = adversary.apgd_targeted
        a.init_hyperparam(x)
        with torch.no_grad():
            order = model(x).sort(dim=1)[1]
        out = []
        for target in range(2, a.n_target_classes + 2):
            a.y_target = order[:, -target]
            out += [a.attack_single_run(x, y)[0] for _ in range(a.n_restarts)]
        return out
    if attack in ("fab", "fab-t"):
        # FAB searches the smallest perturbation that reaches the decision boundary; its
        # strongest point within the budget is that boundary point projected into the eps ball.
        f = adversary.fab
        f.device, f.targeted = x.device, attack == "fab-t"
        if f.targeted:
            f.n_restarts = 1  # as run_standard_evaluation does for fab-t
        runs = [(t, r) for t in (range(2, f.n_target_classes + 2) if f.targeted else [None])
                for r in range(f.n_restarts)]
        out = []
        with torch.no_grad():
            for target, restart in runs:
                if target is not None:
                    f.target_class = target
                adv = f.attack_single_run(x, y, use_rand_start=restart > 0, is_targeted=f.targeted)
                out.append(project_linf(adv, x, eps))
        return out
    if attack == "square":  # its best candidate (lowest margin found)
        sq = adversary.square
        sq.init_hyperparam(x)
        if draws > 1:
            sq.margin_and_loss = _square_margin_over_draws(model, draws)
        return [sq.attack_single_run(x, y)[1] for _ in range(sq.n_restarts)]
    raise DarhtError(f"unknown AutoAttack attack '{attack}'")


def strongest_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
                     version: str = "standard", attacks_to_run: list[str] | None = None,
                     n_queries: int | None = None, seed: int = 0, verbose: bool = False,
                     eot: int = 1, own_verdict: bool = False, **kw: Any) -> AttackOutput:
    """The attacks of `version`/`attacks_to_run`, each returning its strongest point for every
    example (APGD: highest-loss iterate; APGD-T: one per target; FAB: its boundary point projected
    into the ball; Square: its best candidate, with the margin averaged over `eot` draws).

    own_verdict: also run `run_standard_evaluation` and keep pyautoattack's robust mask.
    """
    if n_queries is not None:
        kw["n_queries"] = n_queries
    _check_call(x, y, eps, version, attacks_to_run, kw)
    if x.shape[0] == 0:
        return AttackOutput([x.clone()], ["none"], torch.zeros(0, dtype=torch.bool, device=x.device))
    draws = eot if eot > 1 else int(kw.get("eot_iter", 1))  # Square's draws inside an ensemble
    candidates, names = [], []
    with _guarded(model, x, verbose):
        adversary = _adversary(model, x, eps, version, attacks_to_run, seed, kw)
        for attack in adversary.attacks_to_run:
            pts = _points(adversary, attack, model, x.detach(), y.detach(), eps, seed, draws)
            candidates += [p.detach() for p in pts]
            names += [attack] * len(pts)
    verdict = None
    if own_verdict:
        verdict = run_autoattack(model, x, y, eps=eps, version=version, attacks_to_run=attacks_to_run,
                                 seed=seed, verbose=verbose, **kw)[1]
    return AttackOutput(candidates, names, verdict)


def _adapter(name: str, version: str, attacks: list[str] | None, *, eot: str | None, white_box: bool,
             ensemble: bool = False, paper_defaults: dict | None = None, steps: str | None = "n_iter",
             **fixed: Any):
    def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
               seed: int = 0, verbose: bool = False, **kw: Any) -> torch.Tensor:
        kw.pop("eot", None)  # Square's draws: only the strongest-point mode uses them
        return run_autoattack(model, x, y, eps=eps, version=version, attacks_to_run=attacks,
                              seed=seed, verbose=verbose, **{**fixed, **kw})[0]

    def strongest(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
                  seed: int = 0, verbose: bool = False, **kw: Any) -> AttackOutput:
        return strongest_points(model, x, y, eps=eps, version=version, attacks_to_run=attacks,
                                seed=seed, verbose=verbose, own_verdict=ensemble, **{**fixed, **kw})

    attack.__name__ = name.replace("-", "_")
    attack.__doc__ = f"pyautoattack '{name}' (Linf): f(model, x, y, *, eps, seed, verbose, **settings) -> x_adv."
    members = attacks or {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "rand": ["apgd-ce", "apgd-dlr"]}[version]
    return ATTACKS.register(name, eot=eot, steps=steps, white_box=white_box, ensemble=ensemble, strongest=strongest,
                            paper_defaults=dict(paper_defaults or {}),
                            min_classes=max(MIN_CLASSES[m] for m in members))(attack)


apgd_ce = _adapter("apgd-ce", "custom", ["apgd-ce"], eot="eot_iter", white_box=True)
apgd_dlr = _adapter("apgd-dlr", "custom", ["apgd-dlr"], eot="eot_iter", white_box=True)
apgd_t = _adapter("apgd-t", "custom", ["apgd-t"], eot="eot_iter", white_box=True)
fab_t = _adapter("fab-t", "custom", ["fab-t"], eot=None, white_box=True)
square = _adapter("square", "custom", ["square"], eot="eot", white_box=False, steps="n_queries", n_queries=5000,
                  paper_defaults={"n_queries": 5000})
autoattack = _adapter("autoattack", "standard", None, eot="eot_iter", white_box=True, ensemble=True)
autoattack_rand = _adapter("autoattack-rand", "rand", None, eot="eot_iter", white_box=True, ensemble=True)
