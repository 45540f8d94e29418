"""Set-up of a training run, done once before the loop: data and loader (the global batch split
over the ranks), teachers, the model and its method, AMP autocast, starting weights,
torch.compile (checked, with a fallback), the DDP wrapper under torchrun, the CUDA backend
switches (cudnn.benchmark, TF32), the CPU allocator's policy and the optional TensorBoard writer."""

from __future__ import annotations

import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from darht.config import TrainConfig
from darht.data.base import ImageData, load_dataset, split_train_val
from darht.data.loader import Augment, Loader
from darht.engine import checkpoint as ckpt
from darht.engine import distributed as ddp
from darht.engine.malloc import set_cpu_malloc
from darht.errors import DarhtError
from darht.methods.base import Method, teacher_specs
from darht.models.io import load_state, read_state_dict
from darht.models.teachers import load_teacher
from darht.registry import METHODS


def build_data(cfg: TrainConfig, info: ddp.DistInfo, device: torch.device) -> tuple[ImageData, ImageData, Loader]:
    """(train split, held-out validation split, this rank's loader over the train split).

    Data larger than memory is streamed from a mapped uint8 cache (`darht.data.cache`, shared by
    the ranks of a machine) when data.stream is true, or when null and the decoded split is large;
    the batches are bit-identical to an in-memory run's."""
    from darht.data.cache import choose_stream, open_cached, ranks_here

    stream, why = choose_stream(cfg.data.stream, cfg.data.name, "train", cfg.data.root,
                                ranks_here(info.world_size), **cfg.data.kwargs)
    if stream:
        data = open_cached(cfg.data.name, "train", cfg.data.root, **cfg.data.kwargs)  # the rank that builds says so
        if info.is_main:
            print(f"note: streaming {cfg.data.name} from {data.store.path} ({why})", file=sys.stderr)
    else:
        data = load_dataset(cfg.data.name, "train", cfg.data.root, **cfg.data.kwargs)
    if cfg.data.limit is not None:
        data = data.subset(slice(0, cfg.data.limit))
    train, val = split_train_val(data, cfg.data.val_fraction, cfg.seed)
    # cfg.batch_size is the global batch: each of the world_size ranks takes its share.
    if cfg.batch_size % info.world_size and info.is_main:
        print(f"note: batch size {cfg.batch_size} is not divisible by {info.world_size} ranks", file=sys.stderr)
    per_rank = max(1, cfg.batch_size // info.world_size)
    augment = Augment(cfg.data.padding, cfg.data.flip) if cfg.data.augment else None
    loader = Loader(train, per_rank, shuffle=True, seed=cfg.seed, augment=augment, device=device,
                    rank=info.rank, world_size=info.world_size)
    return train, val, loader


def build_model(cfg: TrainConfig, data: ImageData, device: torch.device,
                info: ddp.DistInfo | None = None) -> tuple[nn.Module, nn.Module, Method]:
    """(the plain model: saved, broadcast; the module validation and the inner attacks call,
    compiled when asked; the method, holding its frozen teachers).

    With more than one rank the method trains through a DistributedDataParallel wrapper (compiled
    too when asked; SyncBatchNorm first with `sync_bn` on CUDA) and attacks the module without it;
    a single process runs exactly as without DDP."""
    method_cls = METHODS.get(cfg.method)
    specs = teacher_specs(method_cls, cfg.teachers)  # in the method's role order
    c, h, _ = data.shape
    k = data.num_classes
    teachers = [load_teacher(s, num_classes=k, in_chans=c, img_size=h, bf16=cfg.teacher_bf16).to(device)
                for s in specs]
    model = method_cls.build_model(cfg.model.name, k, c, h, num_teachers=len(teachers), **cfg.model.kwargs)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
    model = model.to(device)
    parallel = info is not None and info.enabled
    if parallel and cfg.sync_bn:
        if device.type == "cuda":  # same state-dict keys: checkpoints load either way
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif info.is_main:
            print(f"note: sync_bn needs CUDA (SyncBatchNorm has no {device.type} kernel); "
                  "BatchNorm statistics stay per rank", file=sys.stderr)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = maybe_compile(model, data, device) if cfg.compile else model
    try:
        method = method_cls(net, teachers=teachers, **cfg.method_args)
    except (TypeError, ValueError) as e:
        raise DarhtError(f"method '{cfg.method}': bad method_args: {e}") from None
    if parallel:
        wrapped: nn.Module = ddp.wrap(model, device, find_unused=method_cls.unused_parameters,
                                      bf16_compress=cfg.ddp_bf16_compress)
        if net is not model:  # compiled (the trial passed): compile the wrapper, DDP's way
            wrapped = maybe_compile(wrapped, data, device, attack=False)
        method.use_model(wrapped, attack_model=net)
    return model, net, method


def configure_backends(cfg: TrainConfig, device: torch.device) -> None:
    """cudnn.benchmark and TF32 as configured, on CUDA only; on CPU the C allocator's policy
    (`cpu_malloc`, see darht.engine.malloc)."""
    if device.type == "cpu":
        set_cpu_malloc(cfg.cpu_malloc)
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
    precision = "tf32" if cfg.tf32 else "ieee"
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the per-backend precision API
        matmul.fp32_precision = precision
        conv.conv.fp32_precision = precision
    else:
        matmul.allow_tf32 = conv.allow_tf32 = bool(cfg.tf32)


def autocast_for(amp: str, device: torch.device) -> Callable[[], Any]:
    if amp == "none":
        return nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise DarhtError(f"amp fp16 needs a CUDA device (this run is on {device.type}); use amp: bf16")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def load_weights(model: nn.Module, path: str) -> None:
    """Start from `path` (our .safetensors, a run directory, last.pt, a state dict); keys must fit."""
    state, _ = read_state_dict(path)
    load_state(model, state, what=f"model.weights {path}")


def maybe_compile(model: nn.Module, data: Any, device: torch.device, *, attack: bool = True) -> nn.Module:
    """torch.compile, checked with one training forward+backward (compilation is lazy) and, with
    `attack`, one input gradient in eval mode (what the inner attacks take); on failure warn and
    train uncompiled. The trial leaves weights, buffers, grads and RNG streams as they were."""
    try:
        compiled = torch.compile(model)
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        rng = ckpt.rng_state()
        try:
            x = data.subset(slice(0, 2)).float_x().to(device)
            compiled.train()(x).float().sum().backward()
            if attack:
                xg = x.clone().requires_grad_(True)
                torch.autograd.grad(compiled.eval()(xg).float().sum(), xg)
        finally:
            compiled.train()
            model.load_state_dict(saved)
            model.zero_grad(set_to_none=True)
            ckpt.set_rng_state(rng)
        return compiled
    except Exception as e:  # noqa: BLE001 - any backend failure means: run eagerly
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                      "training uncompiled", stacklevel=2)
        return model


def tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tb"))
