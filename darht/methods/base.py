"""The interface every training method implements; the trainer never branches on a method's name.

A method owns the model being trained (and frozen teachers, if any) and turns one batch into a
dict of losses. `out["loss"]` is the scalar the trainer back-propagates; every other entry is a
detached scalar tensor the trainer averages over the epoch and logs (e.g. "ce", "kl",
"w_teacher0"). Inner maximisations run with the model in eval mode and restore its mode.
"""

from __future__ import annotations

import torch
from torch import nn


class Method:
    """Base class. Subclasses set `name` and implement `loss`.

    Constructed as `cls(model, teachers=[...], **params)`; params come from the config's
    `method_args` and keep the defaults of ../shared/SPEC-methods.md.
    """

    name: str = ""
    needs_teachers: bool = False
    # which validation accuracy picks the best checkpoint: "robust" (then clean), or "clean" (then
    # robust) for methods that do not aim at robustness, e.g. MTARD's natural teacher
    select_by: str = "robust"

    def __init__(self, model: nn.Module, teachers: list[nn.Module] | None = None):
        self.model = model
        self.teachers = list(teachers or [])
        self.epoch = 0
        self.epochs = 1
        self.lr_scale = 1.0

    @classmethod
    def build_model(cls, name: str, num_classes: int, in_chans: int, img_size: int,
                    num_teachers: int = 0, **kwargs) -> nn.Module:
        """The model this method trains; DARHT overrides it to wrap the backbone in its student head."""
        from darht.models import create_model

        return create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)

    def start_epoch(self, epoch: int, epochs: int, lr_scale: float = 1.0) -> None:
        """Called by the trainer before each epoch (0-based) with the lr's ratio to its base value."""
        self.epoch, self.epochs, self.lr_scale = epoch, epochs, lr_scale

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # State that must survive a resume (e.g. MTARD's adaptive weights). Plain python/tensors.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
