"""Checkpoints: safetensors weights + resolved config + trainer state, written atomically.

Layout of a training run folder::

    run/
      step-000500/            one checkpoint (a complete, self-contained folder)
        model.safetensors     weights to load (and small buffers such as CMVN statistics)
        config.yaml           the resolved experiment config
        trainer.safetensors   optimizer tensors and RNG states
        trainer.json          step, sampler position, scheduler, optimizer scalars
        ...                   stage-specific files (tokenizer.model, ...)
      latest                  text file naming the newest complete checkpoint folder

A checkpoint is built in a temporary folder and renamed into place, then ``latest`` is replaced
atomically, so an interruption at any moment leaves the previous checkpoint intact. Nothing is
unpickled: tensors go through safetensors, everything else through JSON/YAML.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import write_text_atomic
from .errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint folder that is missing, incomplete or inconsistent (names the path)."""


def save_checkpoint(run_dir: str | os.PathLike, step: int, write: Callable[[Path], None],
                    keep: int = 2) -> Path:
    """Create ``run_dir/step-NNNNNN`` by calling ``write(tmp_folder)``, then point ``latest`` at it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".tmp-step-{step:06d}-"))
    try:
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(run_dir / "latest", final.name + "\n", fsync=True)
    steps = sorted(p for p in run_dir.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder ``latest`` names, or None for a run that has no checkpoint yet."""
    pointer = Path(run_dir) / "latest"
    if not pointer.exists():
        return None
    ckpt = Path(run_dir) / pointer.read_text().strip()
    if not (ckpt / "model.safetensors").exists():
        raise CheckpointError(f"{pointer}: names {ckpt.name}, which is missing or incomplete")
    return ckpt


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a checkpoint folder, or a run folder (its latest checkpoint), or an exported model."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is not None:
            return latest
    raise CheckpointError(f"{path}: not a checkpoint (no model.safetensors, no 'latest' pointer)")


def optimizer_to_files(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict (keyed by parameter names or indices) into safetensors
    tensors (``optim.<param>.<name>``) and a JSON-able remainder."""
    tensors, scalars = {}, {}
    for param, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{param}.{name}"] = value.contiguous()
            else:
                scalars[f"{param}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict, meta: dict) -> dict:
    """The optimizer state_dict back from :func:`optimizer_to_files`."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            param, name = key[len("optim."):].rsplit(".", 1)
            state.setdefault(param, {})[name] = value
    for key, value in meta["scalars"].items():
        param, name = key.rsplit(".", 1)
        state.setdefault(param, {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
              metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e
