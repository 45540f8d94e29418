"""Shared pieces of the in-house attacks: projection, losses, eval-mode and RNG guards, input gradients.

All attacks live in [0, 1] pixel space (normalization is inside the model). Gradients are taken
with `torch.autograd.grad` w.r.t. the input only, so the weights' `.grad` is never touched and an
attack can run in the middle of a training step.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from darht.errors import DarhtError

LossFn = Callable[[torch.Tensor], torch.Tensor]  # logits [B, C] -> scalar loss to ascend


@dataclass
class AttackOutput:
    """What an attack hands the evaluator for a randomized model: for every example, candidate
    points inside the eps ball (never the clean x merely because one draw was not fooled).

    candidates: points [N, ...] each (e.g. one per target class or per ensemble member); the
    evaluator keeps, per example, the candidate that scores lowest on one set of draws and judges
    it on fresh draws. names: the sub-attack that made each candidate. verdict: the attack's own
    robust mask [N] where it has one (pyautoattack's ensembles), recorded next to ours.
    """

    candidates: list[torch.Tensor]
    names: list[str] = field(default_factory=list)
    verdict: torch.Tensor | None = None


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Clip `x_adv` into the L-inf ball of radius eps around x, then into the image box [0, 1]."""
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    return x_adv.clamp(0.0, 1.0)


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return per_example.sum()
    if reduction == "mean":
        return per_example.mean()
    if reduction == "none":
        return per_example
    raise DarhtError(f"unknown reduction '{reduction}'; choose from: sum, mean, none")


def ce_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy; summed by default so each example's gradient does not shrink with the batch size."""
    return _reduce(F.cross_entropy(logits, y, reduction="none"), reduction)


def cw_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0,
            reduction: str = "sum") -> torch.Tensor:
    """CW margin loss to maximise: -clamp(z_y - max_{j != y} z_j + kappa, min=0) per example."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    # mask the true class with -inf so the max runs over the other classes only
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    margin = z_y - others.max(dim=1).values
    return _reduce(-(margin + kappa).clamp(min=0), reduction)


def kl_loss(logits: torch.Tensor, target_probs: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """KL(p || q) = sum_c p (log p - log q) with q = softmax(logits); 0 log 0 = 0."""
    log_q = F.log_softmax(logits, dim=1)
    per_example = (torch.xlogy(target_probs, target_probs) - target_probs * log_q).sum(dim=1)
    return _reduce(per_example, reduction)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run with every submodule in eval mode, then restore each submodule's own `training` flag.

    Restoring per submodule (not `model.train(old)`) keeps deliberately frozen parts (e.g. a
    backbone kept in eval inside a training model) exactly as they were.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def frozen_params(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily stop parameters from requiring grad, for foreign code that calls `.backward()`.

    With no parameter requiring grad, a backward pass only reaches the input, so no `.grad` of a
    weight is created or changed.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Save and restore the global RNG states (python, numpy, torch CPU and CUDA) around a block."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def draw_logits(model: nn.Module, x: torch.Tensor, draws: int) -> torch.Tensor:
    """`draws` independent stochastic predictions of `model` on x: logits [R, N, K].

    A model whose randomness lives only after a deterministic part may provide
    `forward_draws(x, draws)` (the DARHT student samples its head R times on one backbone pass);
    any other model runs `draws` forward passes.
    """
    if draws < 1:
        raise DarhtError(f"draws must be >= 1, got {draws}")
    fn = getattr(model, "forward_draws", None)
    if callable(fn):
        return fn(x, draws)
    return torch.stack([model(x) for _ in range(draws)])


def fp32(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for an attack: fp16 input gradients underflow (sign(0) = no step) and bf16
    logits weaken PGD, so attacks (inner and evaluation) run in fp32 even inside an AMP step."""
    return torch.autocast(x.device.type, enabled=False)


def logits_and_input_grad(model: nn.Module, x_adv: torch.Tensor, loss_fn: LossFn,
                          eot: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the last draw, d loss / d x_adv averaged over `eot` stochastic draws), in fp32.

    `eot` > 1 is Expectation over Transformation for randomized models: the gradient of the mean
    loss over `eot` draws estimates the gradient of the expected loss. With `forward_draws`
    (see `draw_logits`) the draws share one backbone pass and one backward; otherwise each draw
    is its own forward pass. Both give the mean of the per-draw gradients.
    """
    if eot < 1:
        raise DarhtError(f"eot must be >= 1, got {eot}")
    draws = getattr(model, "forward_draws", None)
    if eot > 1 and callable(draws):
        xi = x_adv.detach().float().requires_grad_(True)
        with torch.enable_grad(), fp32(xi):
            all_logits = draws(xi, eot)                       # [R, N, K], one backbone pass
            loss = sum(loss_fn(z) for z in all_logits) / eot
            grad = torch.autograd.grad(loss, [xi])[0]
        return all_logits[-1].detach(), grad
    if eot == 1:  # the common case (every training attack): no accumulator, no extra pass over x
        xi = x_adv.detach().float().requires_grad_(True)
        with torch.enable_grad(), fp32(xi):
            logits = model(xi)
            grad = torch.autograd.grad(loss_fn(logits), [xi])[0]
        return logits.detach(), grad
    grad = torch.zeros_like(x_adv, dtype=torch.float32)
    for _ in range(eot):  # one graph at a time: memory stays that of a single pass
        xi = x_adv.detach().float().requires_grad_(True)
        with torch.enable_grad(), fp32(xi):
            logits = model(xi)
            loss = loss_fn(logits)
            grad += torch.autograd.grad(loss, [xi])[0]
    return logits.detach(), grad / eot


def input_grad(model: nn.Module, x_adv: torch.Tensor, loss_fn: LossFn, eot: int = 1) -> torch.Tensor:
    """d loss_fn(model(x_adv)) / d x_adv, averaged over `eot` passes; weights' .grad untouched."""
    return logits_and_input_grad(model, x_adv, loss_fn, eot)[1]


def random_start(x: torch.Tensor, eps: float, start: str, sigma: float = 0.001) -> torch.Tensor:
    """Starting point of an iterative attack, inside the eps ball and [0, 1].

    normal: x + sigma * N(0, I) (TRADES, RSLAD, DARHT eval); uniform: x + U(-eps, eps) (Madry);
    none: x itself.
    """
    if start == "normal":
        x0 = x + sigma * torch.randn_like(x)
    elif start == "uniform":
        x0 = x + torch.empty_like(x).uniform_(-eps, eps)
    elif start == "none":
        x0 = x.clone()
    else:
        raise DarhtError(f"unknown attack start '{start}'; choose from: normal, uniform, none")
    return project_linf(x0, x, eps).detach()


# (device, dtype, per-example shape) of accelerator inputs whose range has been checked
_RANGE_CHECKED: set[tuple] = set()


def check_range(x: torch.Tensor) -> None:
    """DarhtError unless x lies in [0, 1]. One fused min/max reduction and one host read; on CPU
    (where reading a value costs nothing) on every call, on an accelerator (where the read would
    stall the queue of every attack call, e.g. once per training step) on the first call per
    device, dtype and per-example shape: out-of-range input is a systematic mistake (data not
    scaled to [0, 1], or normalized outside the model), seen on the first batch."""
    if not x.numel():
        return
    key = None
    if x.device.type != "cpu":
        key = (str(x.device), x.dtype, tuple(x.shape[1:]))
        if key in _RANGE_CHECKED:
            return
    lo, hi = torch.aminmax(x.detach())
    if bool((lo < 0) | (hi > 1)):
        raise DarhtError("attack input must lie in [0, 1] (normalization belongs inside the model)")
    if key is not None:
        _RANGE_CHECKED.add(key)


def check_inputs(x: torch.Tensor, y: torch.Tensor | None, eps: float, steps: int | None = None) -> None:
    """User-input checks shared by every attack (one clear line each)."""
    if not torch.is_floating_point(x):
        raise DarhtError(f"attack input must be a float tensor in [0, 1], got dtype {x.dtype}")
    check_range(x)
    if y is not None and (y.ndim != 1 or y.shape[0] != x.shape[0]):
        raise DarhtError(f"labels must have shape [{x.shape[0]}], got {list(y.shape)}")
    if not 0 <= eps <= 1:
        raise DarhtError(f"eps must be in [0, 1] (pixel units), got {eps}")
    if steps is not None and steps < 0:
        raise DarhtError(f"steps must be >= 0, got {steps}")


@torch.no_grad()
def clean_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax f(x) in fp32, without grad: the fixed target of KL attacks (TRADES, RSLAD-style)."""
    with fp32(x):
        return F.softmax(model(x.float()).float(), dim=1)
