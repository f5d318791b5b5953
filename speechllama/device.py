"""Which device a run uses: the one decision, made by the training loop and the inference entry
point from ``train.device`` / ``--device`` (models and tasks never choose a device themselves);
and which process of a torchrun run this is (``distributed_env``, ``rank0_first``)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")  # "cuda:N" is accepted too


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto``: CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else the CPU; ``cpu``;
    ``cuda`` or ``cuda:N``: that GPU, and a one-line error when there is none."""
    spec = (spec or "auto").strip().lower()
    if spec not in DEVICES and not spec.startswith("cuda:"):
        raise UsageError(f"device {spec!r}: expected one of {', '.join(DEVICES)} or cuda:N")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"device {spec!r}: no CUDA device is available here "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                         f"use device cpu or auto")
    index = int(spec.split(":", 1)[1]) if ":" in spec else int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise UsageError(f"device {spec!r}: cuda:{index} does not exist "
                         f"({torch.cuda.device_count()} CUDA devices)")
    return torch.device("cuda", index)


def move(batch, device: torch.device):
    """Every tensor of a (nested) batch on ``device`` (non-blocking from pinned memory);
    other values as they are."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(v, device) for v in batch)
    return batch


# the processes of a torchrun run (the training loop, and a rank-0-first cache)
def distributed_env() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment, initialising the process group once
    (nccl when this rank's device is a GPU, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world


def rank0_first(fn, *args, **kwargs):
    """Run ``fn`` on rank 0, then on the other ranks (which then find its results on disk: a
    feature cache, a converted LLM). Without torch.distributed, just run it."""
    if not (dist.is_available() and dist.is_initialized()):
        return fn(*args, **kwargs)
    if dist.get_rank() == 0:
        result = fn(*args, **kwargs)
        dist.barrier()
        return result
    dist.barrier()
    return fn(*args, **kwargs)
