"""Data-parallel training under `torchrun` (gloo on CPU, nccl on CUDA).

The training forward goes through `DistributedDataParallel` (`wrap`), so gradient all-reduce
overlaps the backward pass. A method calls the model several times per step (TRADES: f(x) and
f(x')) and its inner attack back-propagates to the *input* with the model in eval mode: the
attacks therefore call the module *without* the DDP wrapper (`Method.perturb`), whose backward
passes touch no parameter gradient and fire no reducer hook; only the one real backward of a
step, through the wrapper, is reduced. Several forwards through the wrapper before that one
backward are fine. DDP broadcasts rank 0's buffers (BatchNorm statistics) before every training
forward; the trainer broadcasts them once more after each epoch, so validation and the saved
weights see rank 0's. SyncBatchNorm (`sync_bn`) runs only on CUDA. Collectives on host values
(epoch sums, validation counts) go through `all_reduce_floats`: float64 where the backend keeps
it, never on the hot path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


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


def wrap(model: nn.Module, device: torch.device, *, find_unused: bool = False,
         bf16_compress: bool = False) -> DistributedDataParallel:
    """`model` in DistributedDataParallel (its state is broadcast from rank 0 here).

    `find_unused`: some trainable parameter may get no gradient in a step (DDP must then look for
    it each step, or it waits for it forever). `bf16_compress`: all-reduce gradients in bf16 (DDP's
    compression hook; half the traffic, gradients rounded to bf16 before averaging)."""
    wrapped = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused, gradient_as_bucket_view=True)  # buffers: rank 0's each forward
    if bf16_compress:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        wrapped.register_comm_hook(None, default_hooks.bf16_compress_hook)
    return wrapped


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


def all_reduce_floats(values: list[float], info: DistInfo) -> list[float]:
    """Sums over ranks of host numbers (once per epoch: not the hot path). float64 on the
    backend's own device (CUDA for nccl, the host for gloo): no float64 on MPS."""
    if not info.enabled:
        return list(values)
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=on)
    dist.all_reduce(t)
    return t.tolist()


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
