"""Expectation over Transformation helpers for randomized models (`randomized = True`).

Gradient-based in-house attacks take `eot=n` (the gradient of the loss averaged over n draws, see
core.logits_and_input_grad; one backbone pass for a model with `forward_draws`); pyautoattack's
"rand" version does EOT itself. `EOTWrapper` is for the rest:
it turns a randomized model into one whose logits are the mean over `samples` passes, e.g. to
score predictions or to give a black-box attack (Square) a less noisy oracle.
"""

from __future__ import annotations

import torch
from torch import nn

from darht.attacks.core import draw_logits
from darht.errors import DarhtError


class EOTWrapper(nn.Module):
    """logits(x) = mean_{s < samples} model(x) with fresh randomness per pass. [N, C] -> [N, C]."""

    def __init__(self, model: nn.Module, samples: int = 20):
        super().__init__()
        if samples < 1:
            raise DarhtError(f"EOT samples must be >= 1, got {samples}")
        self.model = model
        self.samples = samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return draw_logits(self.model, x, self.samples).mean(0)

