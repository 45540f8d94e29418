"""Data-parallel training under `torchrun` (gloo on CPU, nccl on CUDA).

Why gradients are averaged by hand instead of wrapping the model in DistributedDataParallel:
a method calls the model several times per step (TRADES: f(x) and f(x')), and its inner attack
back-propagates to the *input* with the model in eval mode. DDP's reducer fires its all-reduce
hooks on every backward pass through the wrapped module and expects exactly one per forward, so
attack gradients would either trigger spurious reductions or break DDP's bookkeeping. Instead
every rank keeps the plain module (the method holds it), starts from rank 0's weights, and after
the one real backward of a step the gradients are all-reduced and divided by the world size.
With identical starting weights, identical averaged gradients and the same optimizer, all ranks
stay bit-identical, for any method. BatchNorm buffers are per rank during an epoch and are
synchronised from rank 0 before validation/saving (as DDP does with broadcast_buffers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

BUCKET_NUMEL = 1 << 24  # ~64 MB of fp32 per all-reduce: bounded extra memory


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we called init_process_group (so we destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns the info and
    this rank's device (cuda:LOCAL_RANK on CUDA)."""
    if dist.is_available() and dist.is_initialized():  # the caller set it up
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    elif launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                        int(os.environ["LOCAL_RANK"]), owns_group=True)
    else:
        return DistInfo(), device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if info.owns_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                rank=info.rank, world_size=info.world_size)
    return info, device


def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src)


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    with torch.no_grad():
        for b in model.buffers():
            dist.broadcast(b.data, src)


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """grad <- mean over ranks of grad, in flattened buckets (one all-reduce per bucket).
    Parameters without a gradient on this rank keep None (all ranks run the same code path)."""
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads + [None]:
        if g is not None and (not bucket or (g.dtype == bucket[0].dtype and size + g.numel() <= BUCKET_NUMEL)):
            bucket.append(g)
            size += g.numel()
            continue
        if bucket:
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat /= world_size
            for dst, src in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                dst.copy_(src)
        bucket, size = ([g], g.numel()) if g is not None else ([], 0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


def all_gather_object(obj: object, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, info: DistInfo, src: int = 0) -> object:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
