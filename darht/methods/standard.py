"""Standard (natural) training: loss = CE(f(x), y). The baseline every robust method is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from darht.methods.base import Method, OriginalSchedule
from darht.methods.losses import accuracy
from darht.registry import METHODS


@METHODS.register("standard")
class Standard(Method):
    """Cross-entropy on clean inputs; takes no arguments."""

    name = "standard"
    select_by = "clean"  # a natural model is chosen for its clean accuracy
    # He et al. 2016 (CIFAR ResNets): 64k iterations at batch 128, lr / 10 at 32k and 48k;
    # on CIFAR-10's 50k images that is 164 epochs with decays after epochs 82 and 123.
    original_schedule = OriginalSchedule(
        epochs=164, lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128,
        milestones=(82, 123), lr_factors=(0.1, 0.01),
        source="He et al. 2016, CIFAR-10 ResNet recipe (64k iterations converted to epochs)")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.model(x)
        ce = F.cross_entropy(logits, y)
        return {"loss": ce, "ce": ce.detach(), "acc": accuracy(logits, y)}
