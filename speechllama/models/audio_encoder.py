"""Audio encoder: compressed CTC-compressor vectors -> vectors in the LLM's embedding space."""

from __future__ import annotations

import torch
from torch import nn

from .transformer import TransformerStack


class AudioEncoder(nn.Module):
    """Linear in -> Transformer layers -> Linear out to the LLM hidden size.

    Shapes: (B, S, C_in) compressed audio, lengths (B,) -> (B, S, H) LLM-space embeddings.

    With ``piece_embeds`` (V_ctc, H) — the LLM's own embedding of each CTC piece's text — the
    output adds ``piece_probs @ piece_embeds``, the CTC posteriors of each compressed vector
    mapped into the LLM's space, and ``proj_out`` starts at zero: training starts from "the LLM
    reads the compressor's soft transcript" and learns what to add (docs/design.md).
    """

    def __init__(self, in_dim: int, dim: int, n_heads: int, n_layers: int, ff_dim: int,
                 dropout: float, out_dim: int, piece_embeds: torch.Tensor | None = None,
                 out_rms: float = 0.0):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, dim)
        self.layers = TransformerStack(dim, n_heads, n_layers, ff_dim, dropout)
        self.proj_out = nn.Linear(dim, out_dim)
        # out_rms > 0: RMS-normalise the output and start its scale at the LLM's token embeddings'
        # RMS, so the audio vectors enter the LLM at the size its own inputs have (unscaled they
        # were ~12x larger than SmolLM2's token embeddings)
        self.out_norm = nn.RMSNorm(out_dim) if out_rms > 0 else None
        if self.out_norm is not None:
            nn.init.constant_(self.out_norm.weight, out_rms)
        self.register_buffer("piece_embeds", piece_embeds, persistent=False)
        if piece_embeds is not None:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                piece_probs: torch.Tensor | None = None) -> torch.Tensor:
        h = self.proj_in(x)  # (B, S, C_in) -> (B, S, D)
        h = self.layers(h, lengths)  # (B, S, D)
        out = self.proj_out(h)  # (B, S, H)
        if self.out_norm is not None:
            out = self.out_norm(out)
        if self.piece_embeds is not None:
            out = out + piece_probs.to(self.piece_embeds.dtype) @ self.piece_embeds  # (B, S, H)
        return out


@torch.no_grad()
def piece_embeddings(ctc_tokenizer, llm_tokenizer, llm_embed: nn.Embedding) -> torch.Tensor:
    """(V_ctc, H): mean LLM input embedding of each CTC piece's text; zero for blank and unk."""
    sp = ctc_tokenizer.sp
    weight = llm_embed.weight.detach().float()
    out = torch.zeros(sp.get_piece_size(), weight.shape[1])
    for v in range(sp.get_piece_size()):
        if sp.is_control(v) or sp.is_unknown(v):
            continue
        text = sp.id_to_piece(v).replace("\u2581", " ")
        ids = llm_tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids:
            out[v] = weight[ids].mean(0)
    return out
