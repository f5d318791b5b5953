"""Audio encoder: compressed CTC-compressor vectors -> vectors in the LLM's embedding space."""

from __future__ import annotations

import torch
from torch import nn

from ..text import LLMTokenCTCTokenizer
from .transformer import TransformerStack


class AudioEncoder(nn.Module):
    """Linear in -> Transformer layers -> Linear out to the LLM hidden size.

    Shapes: (B, S, C_in) compressed audio, lengths (B,) -> (B, S, H) LLM-space embeddings.

    With ``piece_embeds`` (V_ctc, H), the LLM's own input embedding of each CTC label (the piece
    prior), the output is ``piece_embeds[label] + gate * rms_norm(proj_out(h))``: the LLM's
    embedding of the compressor's greedy label at each position, plus a learned correction at the
    scale of the token embeddings whose gate starts at zero. Training starts from "the LLM reads
    the compressor's transcript" and learns what to add, without the fresh projection drowning the
    transcript first (docs/design.md).
    """

    def __init__(self, in_dim: int, dim: int, n_heads: int, n_layers: int, ff_dim: int,
                 dropout: float, out_dim: int, piece_embeds: torch.Tensor | None = None,
                 out_rms: float = 0.0, gated: bool = False):
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
        # gated: the prior comes with each call (``prior``: the LLM's embedding of each vector's
        # token, for spans of the LLM's own tokens) instead of from the label table
        self.gate = nn.Parameter(torch.zeros(())) if piece_embeds is not None or gated else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor | None = None,
                prior: torch.Tensor | None = None) -> torch.Tensor:
        """``labels`` (B, S): the greedy CTC label of each compressed vector (piece prior table);
        ``prior`` (B, S, H): the prior vectors themselves (token-span compression)."""
        h = self.proj_in(x)  # (B, S, C_in) -> (B, S, D)
        h = self.layers(h, lengths)  # (B, S, D)
        out = self.proj_out(h)  # (B, S, H)
        if self.out_norm is not None:
            out = self.out_norm(out.float())  # float32, as its weight (autocast gives bf16)
        if self.piece_embeds is not None:
            prior = self.piece_embeds[labels]  # (B, S, H)
        if prior is not None:
            out = prior.to(out.dtype) + self.gate.to(out.dtype) * out  # (B, S, H)
        return out


@torch.no_grad()
def piece_embeddings(ctc_tokenizer, llm_tokenizer, llm_embed: nn.Embedding,
                     scale: float = 1.0) -> torch.Tensor:
    """(V_ctc, H): the LLM input embedding of each CTC label (its table row times ``scale``, the
    family's embedding scale: what ``llm_embed(ids)`` returns); zero for blank and unk.

    Labels that are this LLM's tokens get their token's embedding (exact); another LLM's token
    or a sentencepiece piece gets the mean embedding of this LLM's tokens of its text (exact too
    where that text is one token of this LLM; a sentencepiece piece often is not, and the LLM reads
    such means poorly, docs/design.md)."""
    table = llm_embed.weight.detach()
    weight = _Rows(table, scale)
    if isinstance(ctc_tokenizer, LLMTokenCTCTokenizer):
        if ctc_tokenizer.same_llm(llm_tokenizer):
            out = torch.zeros(ctc_tokenizer.vocab_size, table.shape[1])
            out[2:] = weight[torch.tensor(ctc_tokenizer.llm_ids, dtype=torch.long)]
            return out
        out = torch.zeros(ctc_tokenizer.vocab_size, table.shape[1])
        for v, label in enumerate(ctc_tokenizer.llm_ids, start=2):  # the label's text, re-tokenised
            ids = llm_tokenizer(ctc_tokenizer.llm_tokenizer.decode([label]),
                                add_special_tokens=False)["input_ids"]
            if ids:
                out[v] = weight[ids].mean(0)
        return out
    sp = ctc_tokenizer.sp
    out = torch.zeros(sp.get_piece_size(), table.shape[1])
    for v in range(sp.get_piece_size()):
        if sp.is_control(v) or sp.is_unknown(v):
            continue
        text = sp.id_to_piece(v).replace("\u2581", " ")
        ids = llm_tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids:
            out[v] = weight[ids].mean(0)
    return out


class _Rows:
    """Rows of an embedding table in float32 times a scale, without copying the whole table."""

    def __init__(self, table: torch.Tensor, scale: float):
        self.table, self.scale = table, scale

    def __getitem__(self, ids) -> torch.Tensor:
        return self.table[ids].float() * self.scale


def embedding_rms(embed: nn.Embedding, scale: float = 1.0, chunk: int = 16384) -> float:
    """Mean RMS of the LLM's input token embeddings (its table rows times ``scale``), in chunks
    (Gemma's table is 262k rows)."""
    table = embed.weight.detach()
    rms = [table[i:i + chunk].float().pow(2).mean(-1).sqrt() for i in range(0, len(table), chunk)]
    return float(torch.cat(rms).mean()) * scale
