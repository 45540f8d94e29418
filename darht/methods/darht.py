"""DARHT: distilling adversarial robustness from heterogeneous teachers (paper sec. 3, Algorithm 1),
and `darht-official`, the same method with the switches read from the authors' released code.

The model trained is a `DarhtStudent` (backbone + teacher maps S^(Tj) + classifier, MC dropout on the
head); `build_model` wraps the configured backbone, so checkpoints rebuild as "darht-student".

darht (paper, the default):
  - each example is made adversarial with probability `adv_prob` = 0.5 (its own coin, global RNG);
    only the chosen examples are attacked, as one sub-batch, against the current student (eval mode);
    teachers and student then see the same mixed batch;
  - loss_i = CE(S(x_i), y_i) + sum_j w_ij KL(softmax S^(Tj)(x_i) || softmax T_j(x_i)),
    w_ij = softmax_j(-CE(T_j(x_i), y_i)); teachers frozen, no grad; batch loss = mean over i;
  - MC dropout: dropout 0.3, 8 samples of the head (see darht.models.student).
darht-official (switches only):
  - KL(softmax T_j || softmax S^(Tj)); w_j = exp(-mean_i CE(T_j(x_i), y_i)), not normalised;
  - one coin per batch (the whole batch is adversarial or clean);
  - no MC dropout (dropout 0, one sample: the student is deterministic);
  - phases: CE only before 50/350 of the run, CE + KD until 118/350, KD only after;
  - inner attack CE-PGD eps 0.031, step 0.003, 10 steps, start x + 0.001 N(0, I).
  Not copied: the released code's teachers left in train mode (ours are frozen in eval mode) and
  its lr of 0 during the first epochs (the trainer's schedule is used as configured).

Inner attacks (`attack`), defaults when eps/alpha/start are not given:
  - "pgd": CE-PGD, eps 8/255, step 2/255, 10 steps, uniform start (PGD-AT's, the training-time
    convention; the paper's x + 0.001 N start is the evaluation PGD's: pass start="normal");
  - "fat": FAT's early-stopped PGD, eps 0.031, step 0.007, 10 steps, tau (default 1; "dynamic" = FAT's
    0/1/2 schedule stretched to the run), omega 0.001, uniform start (FAT's original settings);
  - "trades": TRADES' KL-PGD, eps 0.031, step 0.007, 10 steps, start x + 0.001 N (original settings).

method_args: attack, eps, alpha (the attack's step size), steps, start (uniform|normal|none; pgd/fat),
tau (fat: an integer or "dynamic"), adv_prob, dropout, mc_samples (the student's head; applied to
the model, and recorded in its spec, when the method is constructed).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from darht.errors import DarhtError
from darht.methods.base import Method
from darht.methods._args import check_args, choice, number
from darht.methods.kd import fraction, kl_logits, require_teachers
from darht.methods.schedules import FAT_TAU, StepSchedule
from darht.models.student import unwrap_student
from darht.registry import METHODS

# The authors' phase boundaries (epochs 50 and 118 of 350), kept as fractions of the run.
OFFICIAL_PHASES = (50, 118, 350)

ATTACK_DEFAULTS = {  # attack -> (eps, alpha, start)
    "pgd": (8 / 255, 2 / 255, "uniform"),
    "fat": (0.031, 0.007, "uniform"),
    "trades": (0.031, 0.007, "normal"),
}


def official_phase(epoch: int, epochs: int) -> str:
    """'ce', 'ce+kd' or 'kd' for 0-based `epoch` of `epochs` (integer arithmetic: no float edges)."""
    a, b, total = OFFICIAL_PHASES
    if epoch * total < a * epochs:
        return "ce"
    if epoch * total < b * epochs:
        return "ce+kd"
    return "kd"


@METHODS.register("darht")
class Darht(Method):
    name = "darht"
    needs_teachers = True
    official = False
    default_dropout, default_mc_samples = 0.3, 8
    # The paper's CIFAR setting (sec. 4): 100 epochs of SGD at lr 0.1, no decay stated.
    original_schedule = {
        "epochs": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
        "milestones": [], "lr_factors": [],
        "source": "DARHT paper, sec. 4 (CIFAR-10/100 students)",
    }

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, *,
                 attack: str = "pgd", eps: float | None = None, alpha: float | None = None,
                 steps: int = 10, start: str | None = None, tau: int | str = 1, adv_prob: float = 0.5,
                 dropout: float | None = None, mc_samples: int | None = None, **unknown: Any):
        check_args(self, unknown)
        super().__init__(model, teachers)
        self.attack = choice(self, "attack", attack, ATTACK_DEFAULTS)
        d_eps, d_alpha, d_start = ATTACK_DEFAULTS[attack]
        if self.official and attack == "pgd":
            d_eps, d_alpha, d_start = 0.031, 0.003, "normal"
        self.eps = number(self, "eps", d_eps if eps is None else eps)
        self.alpha = number(self, "alpha", d_alpha if alpha is None else alpha)
        self.start = choice(self, "start", d_start if start is None else start, ("uniform", "normal", "none"))
        self.steps = number(self, "steps", steps, integer=True)
        # tau: FAT's budget, fixed or "dynamic" (FAT's 0/1/2 schedule stretched to the run)
        self.tau_schedule = StepSchedule(FAT_TAU) if tau == "dynamic" else None
        self.fixed_tau = None if tau == "dynamic" else number(self, "tau", tau, integer=True)
        self.adv_prob = fraction(self, "adv_prob", adv_prob)
        dropout = fraction(self, "dropout", self.default_dropout if dropout is None else dropout)
        mc_samples = number(self, "mc_samples", self.default_mc_samples if mc_samples is None else mc_samples,
                            integer=True, minimum=1)
        require_teachers(self.name, self.teachers)
        self.student = unwrap_student(model)
        if self.student is None:
            raise DarhtError(f"method '{self.name}' trains a darht-student; build the model with "
                             f"{type(self).__name__}.build_model")
        if self.student.num_teachers != len(self.teachers):
            raise DarhtError(f"method '{self.name}': the student has {self.student.num_teachers} teacher "
                             f"maps but {len(self.teachers)} teachers were given")
        self.student.configure(dropout=dropout, mc_samples=mc_samples)

    @property
    def tau(self) -> int:
        if self.fixed_tau is not None:
            return self.fixed_tau
        return self.tau_schedule(self.epoch, self.epochs)

    @classmethod
    def build_model(cls, name: str, num_classes: int, in_chans: int, img_size: int,
                    num_teachers: int = 0, dropout: float | None = None, mc_samples: int | None = None,
                    **kwargs: Any) -> nn.Module:
        """A darht-student around backbone `name` (its kwargs: `kwargs`), one map per teacher."""
        from darht.models import create_model

        if num_teachers < 1:
            raise DarhtError(f"method '{cls.name}' needs at least one teacher (set `teachers`)")
        head = {"num_teachers": num_teachers,
                "dropout": cls.default_dropout if dropout is None else dropout,
                "mc_samples": cls.default_mc_samples if mc_samples is None else mc_samples}
        if name == "darht-student":  # the config already names the student: keep its backbone
            return create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                                **{**kwargs, **head})
        return create_model("darht-student", num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                            backbone=name, backbone_kwargs=kwargs, **head)

    # -- the batch ----------------------------------------------------------------------------
    def phase(self) -> str:
        return official_phase(self.epoch, self.epochs) if self.official else "ce+kd"

    def choose(self, n: int, device: torch.device) -> torch.Tensor:
        """Bool [n]: which examples become adversarial (per example, or one coin per batch)."""
        if self.official:
            return (torch.rand(1, device=device) < self.adv_prob).expand(n)
        return torch.rand(n, device=device) < self.adv_prob

    def inner_attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial versions of x [M,...] against the current student (the attack sets eval mode)."""
        kw = dict(eps=self.eps, alpha=self.alpha, steps=self.steps)
        if self.attack == "pgd":
            from darht.attacks.pgd import pgd
            return pgd(self.student, x, y, loss="ce", start=self.start, sigma=0.001, **kw)
        if self.attack == "fat":
            from darht.attacks.fat import fat_pgd
            return fat_pgd(self.student, x, y, tau=self.tau, omega=0.001, loss="ce", start=self.start,
                           sigma=0.001, **kw)
        from darht.attacks.trades import trades_pgd
        return trades_pgd(self.student, x, y, sigma=0.001, **kw)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch: chosen examples replaced by their adversarial versions; and the mask."""
        chosen = self.choose(x.shape[0], x.device)
        idx = chosen.nonzero().squeeze(1)  # [M]
        if idx.numel() == 0:
            return x, chosen
        x_adv = self.inner_attack(x[idx], y[idx]).detach()
        return x.index_copy(0, idx, x_adv), chosen

    # -- the loss -----------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x_in, chosen = self.mix(x, y)
        logits, maps = self.model(x_in, return_maps=True)           # [N,K], [N,J,K] (MC-averaged)
        ce = F.cross_entropy(logits, y, reduction="none")            # [N]
        out: dict[str, torch.Tensor] = {"ce": ce.mean().detach(), "adv_frac": chosen.float().mean()}
        phase = self.phase()
        if phase == "ce":  # official warm-up: teachers are not needed yet
            out["loss"] = ce.mean()
            return out
        with torch.no_grad():
            t_logits = torch.stack([T(x_in).float() for T in self.teachers], dim=1)  # [N,J,K]
            n, j = t_logits.shape[:2]
            t_ce = F.cross_entropy(t_logits.transpose(1, 2), y[:, None].expand(n, j),
                                   reduction="none")                 # [N,J]
        log_s = F.log_softmax(maps.float(), dim=-1)
        log_t = F.log_softmax(t_logits, dim=-1)
        if self.official:
            w = torch.exp(-t_ce.mean(0))                              # [J], unnormalised
            kl = kl_logits(log_t, log_s)                              # [N,J]  KL(T || S^(T))
            kd = (kl.mean(0) * w).sum()
            w_mean = w
            loss = kd if phase == "kd" else ce.mean() + kd
        else:
            w = F.softmax(-t_ce, dim=1)                               # [N,J], rows sum to 1
            kl = kl_logits(log_s, log_t)                              # [N,J]  KL(S^(T) || T)
            kd_i = (w * kl).sum(1)                                    # [N]
            kd = kd_i.mean()
            w_mean = w.mean(0)
            loss = (ce + kd_i).mean()
        out.update(loss=loss, kd=kd.detach())
        for k in range(len(self.teachers)):
            out[f"w_teacher{k}"] = w_mean[k].detach()
            out[f"kl_teacher{k}"] = kl[:, k].mean().detach()
        return out


@METHODS.register("darht-official")
class DarhtOfficial(Darht):
    name = "darht-official"
    official = True
    default_dropout, default_mc_samples = 0.0, 1
    original_schedule = None  # none: the released code's schedule starts at lr 0, a bug not reproduced
