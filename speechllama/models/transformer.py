"""Transformer building blocks shared by the CTC compressor and the audio encoder."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Sinusoidal position table (length, channels), as in Transformer / Whisper."""
    log_timescale = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-log_timescale * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class TransformerStack(nn.Module):
    """Pre-norm Transformer encoder layers with a padding mask and a final LayerNorm.

    Shared by the CTC compressor and the audio encoder (one implementation of the concept).
    """

    def __init__(self, d_model: int, n_heads: int, n_layers: int, ff_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, n_heads, ff_dim, dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, tap: int = 0):
        """x (B, T, C), lengths (B,) -> (B, T, C); with ``tap=k`` also the output of layer k."""
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]  # (B, T)
        x = x + sinusoids(x.shape[1], x.shape[2]).to(x.device, x.dtype)
        tapped = None
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x, src_key_padding_mask=pad)
            if i == tap:
                tapped = x
        return (self.norm(x), tapped) if tap else self.norm(x)
