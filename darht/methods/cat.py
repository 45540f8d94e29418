"""Curriculum adversarial training, CAT (Cai, Liu, Song, IJCAI 2018, "Curriculum Adversarial
Training", sec. 3-4): train against PGD of growing strength k (its number of steps), k = 0 (no
attack) ... K, moving to k + 1 once the model's accuracy against the k-step attack stops improving.

One batch (lesson k), with batch mixing (the paper's remedy for forgetting the weaker attacks):
    split the batch into k + 1 contiguous groups of (nearly) equal size; group i is attacked with
    PGD-i (CE sign-steps from x + U(-eps, eps), step alpha; i = 0: the clean examples);
    loss = CE_mean(f(x_mixed), y)     (= the mean over strengths 0..k of each group's CE)
Without mixing (`mix: false`) every example is attacked with PGD-k.

The curriculum (the paper's rule: a lesson ends when its accuracy has not increased for 10 epochs):
    acc_e = accuracy of the k-step group on the training batches of epoch e, taken from the
            training forward before the update (free: no extra pass);
    if acc_e > best_k: best_k = acc_e, stale = 0;  else stale += 1;
    if stale == patience and k < K: k = k + 1 (a new lesson: best and stale start afresh).
The decision is made at the start of the next epoch; k never exceeds K (= `steps`).

Departures from the paper, each because a Method sees only training batches and the engine owns
the weights (written down in docs/SPEC-training.md):
  - the signal is the training batches' k-step accuracy, not a held-out set's;
  - at a lesson change the paper restores the lesson's best parameters; here training goes on
    from the current ones (restoring would need a second copy of the weights in every checkpoint);
  - the run's length is the engine's `epochs` (the paper stops once k > K); at K training goes on
    with PGD-K mixed batches until the run ends;
  - CAT's input quantization (a test-time defense of the model) is not part of the method.

State (resumable, one host read per checkpoint): k, the lesson's best accuracy, the stale count
and the running sums of the epoch in progress. Under DDP each step's (correct, count) pair is
summed over the ranks (one tiny all-reduce), so every rank holds the same sums and makes the
same decision, and rank 0's checkpoint resumes every rank identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from darht.attacks.pgd import pgd
from darht.constraints import at_least
from darht.methods.args import ArgError, PGDArgs, arg
from darht.methods.base import Method, OriginalSchedule
from darht.registry import METHODS


def strength_groups(n: int, k: int, mix: bool = True) -> list[tuple[int, int, int]]:
    """(strength, start, end) of each non-empty group of a batch of n: with `mix`, k + 1 contiguous
    groups of sizes differing by at most one, group i attacked with i steps; else one group of k."""
    if not mix:
        return [(k, 0, n)] if n else []
    bounds = [i * n // (k + 1) for i in range(k + 2)]
    return [(i, bounds[i], bounds[i + 1]) for i in range(k + 1) if bounds[i + 1] > bounds[i]]


@METHODS.register("cat")
class CAT(Method):
    """Args: eps, alpha (step size), steps (K, the largest strength), start_k, patience, mix."""

    @dataclass(frozen=True)
    class Args(PGDArgs):
        start_k: int = arg(0, at_least(0))      # the first lesson's strength (the paper: 0, no attack)
        patience: int = arg(10, at_least(1))    # epochs without improvement that end a lesson
        mix: bool = True                        # batch mixing of strengths 0..k

        def __post_init__(self) -> None:
            if self.start_k > self.steps:
                raise ArgError(f"start_k ({self.start_k}) must be <= steps, the largest strength K ({self.steps})")

    name = "cat"
    # CAT's Table 5 numbers are Wang et al.'s (2019) runs; their released recipe (train_models.py,
    # 120 epochs, lr 0.01, x0.1 at 1-based epochs 60 and 100) is assumed for their CAT baseline too.
    original_schedule = OriginalSchedule(
        epochs=120, lr=0.01, momentum=0.9, weight_decay=4e-3, batch_size=128,
        milestones=(59, 99), lr_factors=(0.1, 0.01),
        source="Wang et al. 2019 (Table 5's source for CAT), YisenWang/dynamic_adv_training train_models.py")

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, **method_args):
        super().__init__(model, teachers, **method_args)
        self.k = self.args.start_k
        self.best: float | None = None    # the lesson's best epoch accuracy
        self.stale = 0                    # epochs since it last improved
        self.sums_epoch: int | None = None  # the epoch the running sums belong to
        self.sums: torch.Tensor | tuple[float, float] = (0.0, 0.0)  # (correct, count) of the k-step group

    # ---- the curriculum ----------------------------------------------------------------------
    def close_epoch(self, acc: float) -> None:
        """The rule, applied to one finished epoch's k-step accuracy."""
        if self.best is None or acc > self.best:
            self.best, self.stale = acc, 0
        else:
            self.stale += 1
        if self.stale >= self.args.patience and self.k < self.args.steps:
            self.k, self.best, self.stale = self.k + 1, None, 0

    def start_epoch(self, epoch: int, epochs: int, lr_scale: float = 1.0) -> None:
        super().start_epoch(epoch, epochs, lr_scale)
        if self.sums_epoch is not None and epoch > self.sums_epoch:
            correct, count = (float(v) for v in self.sums)  # one host read per epoch
            if count > 0:
                self.close_epoch(correct / count)
            self.sums = (0.0, 0.0)
        if self.sums_epoch is None or epoch > self.sums_epoch:
            self.sums_epoch = epoch

    def _count(self, correct: torch.Tensor, count: int) -> None:
        correct = correct.float()
        pair = torch.stack([correct, correct.new_full((), float(count))])  # a fill, not a host copy
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(pair)  # every rank holds the global sums: one decision everywhere
        prev = self.sums
        if not isinstance(prev, torch.Tensor) or prev.device != pair.device:
            numbers = tuple(float(v) for v in prev)  # after start_epoch or a resume
            prev = (torch.zeros_like(pair) if numbers == (0.0, 0.0)
                    else torch.tensor(numbers, dtype=pair.dtype, device=pair.device))
        self.sums = prev + pair

    # ---- one batch -------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a, k = self.args, self.k
        if self.sums_epoch is None:  # loss() before any start_epoch: the sums belong to epoch 0
            self.sums_epoch = self.epoch
        groups = strength_groups(len(x), k, a.mix)
        parts = []
        for steps, lo, hi in groups:
            if steps == 0:
                parts.append(x[lo:hi])
            else:
                parts.append(self.perturb(pgd, x[lo:hi], y[lo:hi], eps=a.eps, alpha=a.alpha, steps=steps,
                                          loss="ce", start="uniform"))
        x_mixed = torch.cat(parts) if len(parts) > 1 else parts[0]
        logits = self.model(x_mixed)
        ce = F.cross_entropy(logits, y)
        lesson = [(lo, hi) for s, lo, hi in groups if s == k]
        lo, hi = lesson[0] if lesson else (0, 0)
        correct = (logits[lo:hi].detach().argmax(1) == y[lo:hi]).sum()
        self._count(correct, hi - lo)
        acc = correct.float() / max(hi - lo, 1)
        return {"loss": ce, "ce": ce.detach(), "lesson_acc": acc,
                "k": x.new_full((), float(k), dtype=torch.float32)}

    # ---- resumable state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        correct, count = (float(v) for v in self.sums)
        return {"k": self.k, "best": self.best, "stale": self.stale, "sums_epoch": self.sums_epoch,
                "correct": correct, "count": count}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.k = min(int(state.get("k", self.args.start_k)), self.args.steps)
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.stale = int(state.get("stale", 0))
        epoch = state.get("sums_epoch")
        self.sums_epoch = None if epoch is None else int(epoch)
        self.sums = (float(state.get("correct", 0.0)), float(state.get("count", 0.0)))
