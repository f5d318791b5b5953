"""Which device a run uses: the one decision, made by the training loop and the inference entry
point from ``train.device`` / ``--device`` (models and tasks never choose a device themselves)."""

from __future__ import annotations

import os

import torch

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
