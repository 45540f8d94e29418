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
from torch import nn

from darht.attacks.core import check_inputs, eval_mode, frozen_params, preserved_rng
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
    check_inputs(x, y, eps)
    if y is None:
        raise DarhtError("AutoAttack needs labels y")
    if version not in VERSIONS:
        raise DarhtError(f"unknown AutoAttack version '{version}'; choose from: {', '.join(VERSIONS)}")
    unknown = sorted(set(kw) - set(TUNABLE))
    if unknown:
        raise DarhtError(f"unknown AutoAttack setting(s) {', '.join(unknown)}; "
                         f"choose from: {', '.join(TUNABLE + ('n_queries', 'seed', 'verbose'))}")
    if n_queries is not None:
        kw["n_queries"] = n_queries
    if version == "custom" and not attacks_to_run:
        raise DarhtError("AutoAttack version 'custom' needs attacks_to_run")
    bad = [a for a in attacks_to_run or [] if a not in MIN_CLASSES]
    if bad:
        raise DarhtError(f"unknown AutoAttack attack(s) {', '.join(bad)}; "
                         f"choose from: {', '.join(MIN_CLASSES)}")
    if x.shape[0] == 0:
        return x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device)

    from pyautoattack import AutoAttack  # imported here: it is slow to import and only needed here

    with eval_mode(model), frozen_params(model), preserved_rng(), _quiet(verbose):
        n_cls = _num_classes(model, x)
        adversary = AutoAttack(model, norm="Linf", eps=float(eps), version=version, device=x.device,
                               seed=seed, attacks=list(attacks_to_run) if version == "custom" else None)
        if attacks_to_run:  # a subset run with the settings of `version` (e.g. EOT 20 for rand)
            adversary.attacks_to_run = list(attacks_to_run)
        _check_classes(list(adversary.attacks_to_run), n_cls)
        _configure(adversary, n_cls, kw)
        x_adv, y_adv = adversary.run_standard_evaluation(
            x.detach(), y.detach(), batch_size=kw.get("batch_size", 250))
    # AutoAttack's y_adv is the clean prediction, replaced by the fooled prediction where it won
    return x_adv.detach(), (y_adv == y)


def _adapter(name: str, version: str, attacks: list[str] | None, **fixed: Any):
    def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
               seed: int = 0, verbose: bool = False, **kw: Any) -> torch.Tensor:
        return run_autoattack(model, x, y, eps=eps, version=version, attacks_to_run=attacks,
                              seed=seed, verbose=verbose, **{**fixed, **kw})[0]

    attack.__name__ = name.replace("-", "_")
    attack.__doc__ = f"pyautoattack '{name}' (Linf): f(model, x, y, *, eps, seed, verbose, **settings) -> x_adv."
    return ATTACKS.register(name)(attack)


apgd_ce = _adapter("apgd-ce", "custom", ["apgd-ce"])
apgd_dlr = _adapter("apgd-dlr", "custom", ["apgd-dlr"])
apgd_t = _adapter("apgd-t", "custom", ["apgd-t"])
fab_t = _adapter("fab-t", "custom", ["fab-t"])
square = _adapter("square", "custom", ["square"], n_queries=5000)
autoattack = _adapter("autoattack", "standard", None)
autoattack_rand = _adapter("autoattack-rand", "rand", None)
