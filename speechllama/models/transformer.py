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
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, ff_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]  # (B, T)
        x = x + sinusoids(x.shape[1], x.shape[2]).to(x.device, x.dtype)
        return self.norm(self.layers(x, src_key_padding_mask=pad))
