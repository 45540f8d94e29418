"""The interface every training method implements; the trainer never branches on a method's name.

A method owns the model being trained (and frozen teachers, if any) and turns one batch into a
dict of losses. `out["loss"]` is the scalar the trainer back-propagates; every other entry is a
detached scalar tensor the trainer averages over the epoch and logs (e.g. "ce", "kl",
"w_teacher0"). Inner maximisations run with the model in eval mode and restore its mode
(`Method.perturb`).

What a method declares as class attributes, so that nothing outside its file names it:
  - `Args`: its arguments, a frozen dataclass (darht.methods.args); parsed into `self.args`;
  - its teachers: none (the default), any number (`needs_teachers = True`), or named roles, one
    teacher each (`teacher_roles = ("adversarial", "natural")` for MTARD); a config gives either a
    list (in role order) or a mapping role -> teacher, and `teacher_specs` puts them in order;
  - `original_schedule`: its paper's lr steps (`OriginalSchedule`), for `optim.schedule: original`;
  - `select_by`: which validation accuracy picks the best checkpoint;
  - `unused_parameters`: True if a step may leave a trainable parameter without a gradient
    (data-parallel training must then look for such parameters every step).

Under data-parallel training the engine hands the method a DDP-wrapped model (`use_model`):
`self.model` is what the training forward calls, `Method.perturb` attacks the module without
the DDP wrapper (compiled when the run compiles), and `same_on_all_ranks` makes a random
decision that must be one per global batch identical on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from darht.errors import DarhtError
from darht.methods.args import NoArgs, parse_method_args
from darht.models.teachers import as_spec
from darht.models.zoo import create_model


@dataclass(frozen=True)
class OriginalSchedule:
    """An original paper's training recipe: SGD at `lr` for `epochs`, the lr multiplied from
    0-based epoch `milestones[k]` on by `lr_factors[k]` (a multiplier of the BASE lr, not
    cumulative: FAT's 0.1, 0.01, 0.005 mean lr 0.01, 0.001, 0.0005). An original that counts
    epochs from 1 and decays `if epoch >= 60` has milestone 59."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    milestones: tuple[int, ...]
    lr_factors: tuple[float, ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.milestones) != len(self.lr_factors) or any(m >= self.epochs for m in self.milestones):
            raise ValueError(f"original schedule ({self.source}): one factor per milestone, each < epochs")

    def lr_factor(self, epoch: int, epochs: int, scale: bool = True) -> float:
        """The multiplier of the base lr at 0-based `epoch` of a run of `epochs`; with `scale`,
        milestone m of the original's T epochs applies from epoch m * epochs / T."""
        factor = 1.0
        for m, f in zip(self.milestones, self.lr_factors):
            reached = epoch * self.epochs >= m * epochs if scale else epoch >= m  # integers: exact
            if reached:
                factor = f
        return factor


def check_teachers(method_cls: type, count: int) -> None:
    """DarhtError unless `count` teachers is what `method_cls` takes."""
    name, roles = method_cls.name, tuple(method_cls.teacher_roles)
    if not method_cls.needs_teachers and not roles:
        if count:
            raise DarhtError(f"method '{name}' trains without teachers, but {count} were given; "
                             "use a distillation method (e.g. darht, ard, rslad)")
        return
    if count == 0:
        raise DarhtError(f"method '{name}' distills from teachers: set `teachers` in the config")
    if roles and count != len(roles):
        raise DarhtError(f"method '{name}' needs exactly {len(roles)} teachers ({', '.join(roles)}), got {count}")


def teacher_specs(method_cls: type, teachers: list | Mapping | None) -> list[str]:
    """A config's `teachers` (a list, or a mapping role -> teacher for a method with roles) as the
    list of spec strings the method takes, in its role order; checked against what the method takes.

    A teacher is a spec string or a mapping `{robustbench: NAME, path: PATH}` (-> 'NAME=PATH',
    darht.models.teachers.as_spec); one such mapping may also stand alone as `teachers`."""
    roles = tuple(method_cls.teacher_roles)
    if isinstance(teachers, Mapping) and "robustbench" in teachers:
        teachers = [teachers]  # a single teacher given as a mapping, not roles
    if isinstance(teachers, Mapping):
        if not roles:
            raise DarhtError(f"method '{method_cls.name}' takes a list of teachers, not roles "
                             f"(got {', '.join(map(str, teachers))})")
        if set(teachers) != set(roles):
            raise DarhtError(f"method '{method_cls.name}' takes one teacher per role: {', '.join(roles)}; "
                             f"got {', '.join(map(str, teachers)) or '(none)'}")
        specs = [as_spec(teachers[r], f"teachers.{r}") for r in roles]
    else:
        specs = [as_spec(t, f"teachers[{i}]") for i, t in enumerate(teachers or [])]
    check_teachers(method_cls, len(specs))
    return specs


def without_ddp(model: nn.Module) -> nn.Module:
    """`model` without its DDP/DataParallel wrapper; a torch.compile wrapper around the bare
    model is kept (the attack then runs compiled), one around DDP is dropped with it."""
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    inner = model._modules.get("_orig_mod")
    if isinstance(inner, parallel):  # torch.compile(DDP(m)): compiles the wrapper's forward
        model = inner
    while isinstance(model, parallel):
        model = model.module
    return model


def same_on_all_ranks(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's `t` on every rank under data-parallel training (ranks draw from different random
    streams); `t` itself in a single process. For a decision made once per global batch."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, 0)
    return t


class Method:
    """Base class. Subclasses set `name`, `Args` and the teachers they take, and implement `loss`.

    Constructed as `cls(model, teachers=[...], **method_args)`: the arguments are parsed into
    `self.args` (a `cls.Args`), the teachers checked against what the class takes.
    """

    name: str = ""
    Args: type = NoArgs
    needs_teachers: bool = False
    teacher_roles: tuple[str, ...] = ()
    original_schedule: OriginalSchedule | None = None
    # which validation accuracy picks the best checkpoint: "robust" (then clean), or "clean" (then
    # robust) for methods that do not aim at robustness, e.g. MTARD's natural teacher
    select_by: str = "robust"
    unused_parameters: bool = False

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None, **method_args: Any):
        self.args = parse_method_args(type(self), method_args)
        self.model = model
        self._attack_model: nn.Module | None = None
        self.teachers = list(teachers or [])
        check_teachers(type(self), len(self.teachers))
        self.epoch = 0
        self.epochs = 1
        self.lr_scale = 1.0

    def use_model(self, model: nn.Module, attack_model: nn.Module | None = None) -> None:
        """Train through `model` (the engine's DDP wrapper) and attack `attack_model` (default:
        `model` without its DDP wrapper). Both hold the same parameters as the model given at
        construction."""
        self.model = model
        self._attack_model = attack_model

    @property
    def attack_model(self) -> nn.Module:
        """What inner attacks run against: the model without DDP, compiled when the run compiles
        (input gradients only, so no DDP reducer hook fires)."""
        return self._attack_model if self._attack_model is not None else without_ddp(self.model)

    def teacher(self, role: str) -> nn.Module:
        """The teacher in `role` (one of `teacher_roles`)."""
        return self.teachers[self.teacher_roles.index(role)]

    @classmethod
    def build_model(cls, name: str, num_classes: int, in_chans: int, img_size: int,
                    num_teachers: int = 0, **kwargs: Any) -> nn.Module:
        """The model this method trains; DARHT overrides it to wrap the backbone in its student head."""
        return create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)

    def start_epoch(self, epoch: int, epochs: int, lr_scale: float = 1.0) -> None:
        """Called by the trainer before each epoch (0-based) with the lr's ratio to its base value."""
        self.epoch, self.epochs, self.lr_scale = epoch, epochs, lr_scale

    def perturb(self, attack: Callable, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> torch.Tensor:
        """`attack(self.attack_model, x, y, **kw)` as a detached x': against the model without its
        DDP wrapper (input gradients only), compiled when the run compiles.

        Attacks promise to restore the model's mode; restoring it here too keeps a training step
        from silently running in eval mode (frozen BatchNorm statistics) if one ever does not.
        """
        model = self.attack_model
        # per submodule, so parts deliberately kept in eval mode inside a training model stay so
        modes = [(m, m.training) for m in model.modules()]
        try:
            x_adv = attack(model, x, y, **kw)
        finally:
            for m, training in modes:
                m.training = training
        return x_adv.detach()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # State that must survive a resume (e.g. MTARD's adaptive weights). Plain python/tensors.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
