"""Device and parallelism of the training loop: DDP or FSDP2 over the LLM's layers, the process
group of a single process, and a full tensor of a sharded one."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn

from ..config import TrainConfig
from ..errors import UsageError


def llm_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a model's LLM (``model.llm``), or [] for a model without one."""
    llm = getattr(model, "llm", None)
    if llm is None or not hasattr(llm, "get_decoder"):
        return []
    return list(getattr(llm.get_decoder(), "layers", []))


def parallelize(model: nn.Module, tc: TrainConfig, device: torch.device, world: int) -> nn.Module:
    """Place ``model`` on ``device``, turn on activation checkpointing and wrap it for ``world``
    processes; returns the module to call (the same module under FSDP2, a DDP wrapper under DDP).

    FSDP2 (``fully_shard``) shards each LLM decoder layer and then the whole model. With
    ``train.bf16`` its mixed-precision policy computes in bf16 and reduces gradients in fp32: the
    frozen base is stored (and sharded) in bf16 by the builder, trainable weights and the AdamW
    state stay fp32 in their shards."""
    model.to(device)
    if tc.activation_checkpointing:
        llm = getattr(model, "llm", None)
        if llm is None or not hasattr(llm, "activation_checkpointing_enable"):
            raise UsageError("train.activation_checkpointing: this model has no LLM layers to "
                             "checkpoint (stage 1 trains a small compressor: leave it off)")
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        llm.config.use_cache = False
    if tc.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        _init_single_process_group()  # torchrun's group, or one of this process alone
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if tc.bf16 else None,
                                      reduce_dtype=torch.float32)
        for layer in llm_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def _init_single_process_group() -> None:
    """FSDP2 needs a process group even in one process (``train.parallel=fsdp`` without
    torchrun): a gloo/nccl group of one on a free local port."""
    if dist.is_initialized():
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)


def no_grad_sync(wrapped: nn.Module, tc: TrainConfig, sync: bool):
    """Gradient reduction off on the inner micro-batches of an accumulated step."""
    if tc.parallel == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if isinstance(wrapped, nn.parallel.DistributedDataParallel) and not sync:
        return wrapped.no_sync()
    return contextlib.nullcontext()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A whole tensor on the CPU from an FSDP2 shard (collective: every rank calls it in the same
    order) or a plain tensor."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu()
