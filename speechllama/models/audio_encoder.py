"""Audio encoder: compressed CTC-compressor vectors -> vectors in the LLM's embedding space."""

from __future__ import annotations

import torch
from torch import nn

from .transformer import TransformerStack


class AudioEncoder(nn.Module):
    """Linear in -> Transformer layers -> Linear out to the LLM hidden size.

    Shapes: (B, S, C_in) compressed audio, lengths (B,) -> (B, S, H) LLM-space embeddings.
    """

    def __init__(self, in_dim: int, dim: int, n_heads: int, n_layers: int, ff_dim: int,
                 dropout: float, out_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, dim)
        self.layers = TransformerStack(dim, n_heads, n_layers, ff_dim, dropout)
        self.proj_out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)  # (B, S, C_in) -> (B, S, D)
        x = self.layers(x, lengths)  # (B, S, D)
        return self.proj_out(x)  # (B, S, H)
