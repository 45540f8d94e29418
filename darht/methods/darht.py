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
  - one coin per batch (the whole batch is adversarial or clean; under DDP one per global batch,
    rank 0's, so every rank's share of the batch gets the same coin);
  - no MC dropout (dropout 0, one sample: the student is deterministic);
  - phases: CE only before 50/350 of the run, CE + KD until 118/350, KD only after;
  - inner attack CE-PGD eps 0.031, step 0.003, 10 steps, start x + 0.001 N(0, I).
  Not copied: the released code's teachers left in train mode (ours are frozen in eval mode) and
  its lr of 0 during the first epochs (the trainer's schedule is used as configured).

Inner attack (`attack`): any attack registered with `training` settings (darht.attacks: its
original training method's eps, step size and start), found through the registry; the short names
`fat` and `trades` mean `fat-pgd` and `trades-pgd`. eps/alpha/start given here override those:
  - "pgd": CE-PGD, eps 8/255, step 2/255, 10 steps, uniform start (PGD-AT's, the training-time
    convention; the paper's x + 0.001 N start is the evaluation PGD's: pass start="normal");
  - "fat": FAT's early-stopped PGD, eps 0.031, step 0.007, 10 steps, tau (default 1; "dynamic" = FAT's
    0/1/2 schedule stretched to the run), omega 0.001, uniform start (FAT's original settings);
  - "trades": TRADES' KL-PGD, eps 0.031, step 0.007, 10 steps, start x + 0.001 N (original settings).
An attack gets the arguments it declares among: eps, alpha, steps, start, sigma (0.001), tau, loss ("ce").

method_args (`Darht.Args`): attack, eps, alpha (the attack's step size), steps, start
(uniform|normal|none), tau (an integer or "dynamic"), adv_prob, dropout, mc_samples (the student's
head; applied to the model, and recorded in its spec, when the method is constructed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from darht.constraints import at_least, between
from darht.errors import DarhtError
from darht.methods.args import FAT_TAU, ArgError, StepSchedule, arg
from darht.methods.base import Method, OriginalSchedule, same_on_all_ranks
from darht.methods.losses import kl_logits, log_probs
from darht.models.student import unwrap_student
from darht.models.zoo import create_model
from darht.registry import ATTACKS, METHODS
from darht.typecheck import keyword_types

# The authors' phase boundaries (epochs 50 and 118 of 350), kept as fractions of the run.
OFFICIAL_PHASES = (50, 118, 350)
# Short names of the inner attacks (the names this method's config has always used).
ATTACK_ALIASES = {"fat": "fat-pgd", "trades": "trades-pgd"}


def inner_attacks() -> list[str]:
    """The attacks DARHT can train against: those registered with `training` settings."""
    names = [n for n in ATTACKS.names() if ATTACKS.meta(n).get("training") is not None]
    return sorted(names + [a for a, n in ATTACK_ALIASES.items() if n in names])


@dataclass(frozen=True)
class DarhtArgs:
    attack: str = "pgd"
    eps: float | None = None                      # None: the attack's training setting
    alpha: float | None = arg(None, at_least(0))
    steps: int = arg(10, at_least(0))
    start: Literal["uniform", "normal", "none"] | None = None
    tau: int | str = arg(1, at_least(0))          # FAT's budget, or "dynamic"
    adv_prob: float = arg(0.5, between(0, 1))
    dropout: float | None = arg(None, between(0, 1))
    mc_samples: int | None = arg(None, at_least(1))

    def __post_init__(self) -> None:
        if self.attack not in inner_attacks():
            raise ArgError(f"attack must be one of {', '.join(inner_attacks())}; got {self.attack!r}")
        if isinstance(self.tau, str) and self.tau != "dynamic":
            raise ArgError(f"tau must be an integer >= 0 or 'dynamic', got {self.tau!r}")


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
    Args = DarhtArgs
    name = "darht"
    needs_teachers = True
    official = False
    default_dropout, default_mc_samples = 0.3, 8
    inner_overrides: dict[str, dict[str, Any]] = {}  # attack -> settings replacing its training ones
    # The paper's CIFAR setting (sec. 4): 100 epochs of SGD at lr 0.1, no decay stated.
    original_schedule = OriginalSchedule(
        epochs=100, lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128, milestones=(), lr_factors=(),
        source="DARHT paper, sec. 4 (CIFAR-10/100 students)")

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, **method_args: Any):
        super().__init__(model, teachers, **method_args)
        a = self.args
        self.attack_name = ATTACK_ALIASES.get(a.attack, a.attack)
        self.attack_fn = ATTACKS.get(self.attack_name)
        accepted, _ = keyword_types(self.attack_fn)
        given = {"eps": a.eps, "alpha": a.alpha, "start": a.start}
        settings = {**ATTACKS.meta(self.attack_name)["training"], "sigma": 0.001, "loss": "ce",
                    **self.inner_overrides.get(self.attack_name, {}),
                    **{k: v for k, v in given.items() if v is not None}, "steps": a.steps}
        self.inner = {k: v for k, v in settings.items() if k in accepted}  # what the attack is called with
        self.takes_tau = "tau" in accepted
        self.eps = self.inner.get("eps", a.eps)
        self.tau_schedule = StepSchedule(FAT_TAU) if a.tau == "dynamic" else None
        self.student = unwrap_student(model)
        if self.student is None:
            raise DarhtError(f"method '{self.name}' trains a darht-student; build the model with "
                             f"{type(self).__name__}.build_model")
        if self.student.num_teachers != len(self.teachers):
            raise DarhtError(f"method '{self.name}': the student has {self.student.num_teachers} teacher "
                             f"maps but {len(self.teachers)} teachers were given")
        self.student.configure(dropout=self.default_dropout if a.dropout is None else a.dropout,
                               mc_samples=self.default_mc_samples if a.mc_samples is None else a.mc_samples)

    @property
    def tau(self) -> int:
        """FAT's budget for the current epoch: fixed, or "dynamic" (FAT's 0/1/2 stretched to the run)."""
        if self.tau_schedule is None:
            return self.args.tau
        return self.tau_schedule(self.epoch, self.epochs)

    @classmethod
    def build_model(cls, name: str, num_classes: int, in_chans: int, img_size: int,
                    num_teachers: int = 0, dropout: float | None = None, mc_samples: int | None = None,
                    **kwargs: Any) -> nn.Module:
        """A darht-student around backbone `name` (its kwargs: `kwargs`), one map per teacher."""
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
        """Bool [n] on the host: which examples become adversarial (per example, or one coin per
        batch). Drawn from the CPU generator, so that picking the chosen rows (`nonzero`) does not
        wait for the accelerator; on a CPU run the draws are those of `torch.rand(n)` as before."""
        if self.official:  # one coin per global batch: rank 0's under DDP (NCCL broadcasts on the device)
            coin = torch.rand(1, device="cpu")
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                coin = same_on_all_ranks(coin.to(device)).cpu()
            return (coin < self.args.adv_prob).expand(n)
        return torch.rand(n, device="cpu") < self.args.adv_prob

    def inner_attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial versions of x [M,...] against the current student (the attack sets eval mode)."""
        kw = {**self.inner, "tau": self.tau} if self.takes_tau else self.inner
        return self.perturb(self.attack_fn, x, y, **kw)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch: chosen examples replaced by their adversarial versions; and the mask."""
        chosen = self.choose(x.shape[0], x.device)
        idx = chosen.nonzero().squeeze(1)  # [M], on the host: no device synchronisation
        chosen = chosen.to(x.device, non_blocking=True)
        if idx.numel() == 0:
            return x, chosen
        idx = idx.to(x.device, non_blocking=True)
        x_adv = self.inner_attack(x[idx], y[idx])
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
        log_s = log_probs(maps)
        log_t = log_probs(t_logits)
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
    unused_parameters = True  # the KD-only phase leaves the final classifier without a gradient
    inner_overrides = {"pgd": {"eps": 0.031, "alpha": 0.003, "start": "normal"}}  # the released code's
    original_schedule = None  # none: the released code's schedule starts at lr 0, a bug not reproduced
