"""Batches on the device: seeded order per epoch, DDP sharding, batched augmentation.

No worker processes: the data set is one tensor in memory (or one mapped uint8 file, see
`darht.data.cache`), a batch is an index into it, and conversion to float and augmentation run on
the device, where they cost little next to a training step (and next to the attack steps
adversarial training adds). A batch gathered on the host for a CUDA device is pinned and copied
with non_blocking=True.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from darht.data.base import ImageData, derive_seed, to_float
from darht.errors import DarhtError


class Augment:
    """Random crop with zero padding + random horizontal flip, for a whole batch at once."""

    def __init__(self, padding: int = 4, flip: bool = True):
        if padding < 0:
            raise DarhtError(f"augment padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.flip = bool(flip)

    def __repr__(self) -> str:
        return f"Augment(padding={self.padding}, flip={self.flip})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x [N, C, H, W] float -> same shape. Offsets are drawn on the CPU from `generator`, so
        a seed gives the same augmentation on every device."""
        n, p = x.shape[0], self.padding
        top = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return self.apply(x, top, left, flip)

    def apply(self, x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """The crop of the zero-padded image at rows top..top+H-1, columns left..left+W-1 (each [N]),
        mirrored where `flip` [N]; one gather for the batch."""
        n, c, h, w = x.shape
        p = self.padding
        dev = x.device
        top, left, flip = top.to(dev), left.to(dev), flip.to(dev)
        xp = F.pad(x, (p, p, p, p)) if p else x                      # [N, C, H+2p, W+2p]
        rows = top[:, None] + torch.arange(h, device=dev)              # [N, H]
        ar = torch.arange(w, device=dev)
        cols = left[:, None] + torch.where(flip[:, None], w - 1 - ar, ar)  # [N, W], reversed if flipped
        # advanced indexing broadcasts to [N, C, H, W]
        return xp[torch.arange(n, device=dev)[:, None, None, None],
                  torch.arange(c, device=dev)[None, :, None, None],
                  rows[:, None, :, None],
                  cols[:, None, None, :]]


class Loader:
    """Iterate (x float [0,1] on `device`, y int64 on `device`) batches of `data`.

    The order of epoch e depends only on (seed, e): `set_epoch(e)` before iterating, and a resumed
    run sees the batches it would have seen. With world_size > 1 each rank takes every
    world_size-th index of the epoch's permutation after padding it by wrap-around to a multiple
    of world_size (as torch's DistributedSampler), so all ranks run the same number of batches;
    a few examples then appear twice per epoch across ranks.
    `resident=True` moves the whole (uint8) data set to the device once instead of per batch.
    Otherwise each batch is gathered on the host with `data.take` (a mapped data set reads only
    those rows) and, for a CUDA device, pinned (`pin_memory`, default: device is CUDA) so the copy
    runs asynchronously.
    """

    def __init__(self, data: ImageData, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 augment: Augment | None = None, device: str | torch.device = "cpu",
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, resident: bool = False,
                 pin_memory: bool | None = None):
        if batch_size < 1:
            raise DarhtError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DarhtError(f"bad rank/world_size {rank}/{world_size}")
        if len(data) == 0:
            raise DarhtError(f"{data.name or 'data set'}: no examples to load")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.resident = bool(resident)
        if self.resident:
            self._x = data.x.to(self.device)
            self._y = data.y.to(self.device)
        on_host = data.device.type == "cpu" and not self.resident
        self.pin_memory = (self.device.type == "cuda" and on_host) if pin_memory is None else bool(pin_memory)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def num_samples(self) -> int:
        """Examples this rank sees per epoch (before drop_last)."""
        return -(-len(self.data) // self.world_size)

    def __len__(self) -> int:
        m = self.num_samples()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's indices into `data` for the current epoch, in order."""
        n = len(self.data)
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self.num_samples() * self.world_size
        if total > n:  # wrap around: repeat the start of the permutation
            order = torch.cat([order, order[: total - n]])
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices()
        for b in range(len(self)):
            i = idx[b * self.batch_size:(b + 1) * self.batch_size]
            if self.resident:
                x = self._x[i.to(self._x.device)]
                y = self._y[i.to(self._y.device)]
            else:
                x = self.data.take(i.to(self.data.device))
                y = self.data.y[i.to(self.data.y.device)]
                if self.pin_memory:  # page-locked: the host-to-device copy below runs asynchronously
                    x, y = x.pin_memory(), y.pin_memory()
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
            x = to_float(x)
            if self.augment is not None:
                g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.rank, b))
                x = self.augment(x, g)
            yield x, y
