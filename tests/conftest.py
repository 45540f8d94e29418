"""Shared test settings: tiny tensors run fastest (and steadiest on a loaded machine) on one thread."""

import torch

torch.set_num_threads(1)
