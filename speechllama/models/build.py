"""The only place that wires model parts from a config, and loads them back from checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..audio import CMVN
from ..checkpoint import CheckpointError, load_tensors, resolve_checkpoint
from ..config import ConfigError, ExperimentConfig, load_config
from ..text import CTCTokenizer
from .ctc_compressor import CTCCompressor


def build_compressor(cfg: ExperimentConfig) -> CTCCompressor:
    c = cfg.compressor
    return CTCCompressor(cfg.features.n_mels, c.conv_channels, c.d_model, c.n_heads, c.n_layers,
                         c.ff_dim, c.dropout, c.vocab_size)


@dataclass
class CompressorBundle:
    """A trained CTC compressor with what it needs at inference: CMVN stats and the tokenizer."""

    model: CTCCompressor
    cmvn: CMVN
    tokenizer: CTCTokenizer
    config: ExperimentConfig
    path: Path


def compressor_state(model: CTCCompressor, cmvn: CMVN) -> dict[str, torch.Tensor]:
    """Tensors of a stage-1 checkpoint's model.safetensors."""
    sd = {f"compressor.{k}": v for k, v in model.state_dict().items()}
    sd.update({f"cmvn.{k}": v for k, v in cmvn.state_dict().items()})
    return sd


def split_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_compressor(path: str | Path) -> CompressorBundle:
    """Load a stage-1 checkpoint folder (or a run folder: its latest checkpoint)."""
    folder = resolve_checkpoint(path)
    try:
        cfg = load_config(folder / "config.yaml")
    except ConfigError as e:
        raise CheckpointError(f"{folder}: bad config.yaml: {e}") from e
    tok_file = folder / "tokenizer.model"
    if not tok_file.exists():
        raise CheckpointError(f"{folder}: no tokenizer.model (not a CTC compressor checkpoint?)")
    tensors = load_tensors(folder / "model.safetensors")
    model = build_compressor(cfg)
    try:
        model.load_state_dict(split_state(tensors, "compressor"))
    except RuntimeError as e:
        raise CheckpointError(f"{folder}: weights do not match config.yaml: {e}") from e
    model.eval()
    cmvn = CMVN.from_state_dict(split_state(tensors, "cmvn"))
    return CompressorBundle(model, cmvn, CTCTokenizer(tok_file.read_bytes()), cfg, folder)
