"""The paper's encoder-decoder baseline: conv front end + Transformer encoder, and a Transformer
decoder with cross-attention, trained from scratch.

The decoder follows the call convention of a Hugging Face causal LM (``inputs_embeds`` or
``input_ids``, a 4-D additive ``attention_mask`` (or a decoding step's 2-D padding mask), ``position_ids``, ``cache``, ``logits_to_keep``)
so ``speechllama.decode`` (greedy, beam, KV cache) serves all systems. The encoder memory rides in
the cache (:class:`Seq2SeqCache`), so beam search reorders it with the self-attention keys/values.

Shape legend: B batch, T decoder positions, S encoder frames, D width, V vocabulary.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from .decode import DecodingOptions, generate
from .speech_llm import assemble, next_token_loss
from .transformer import TransformerStack, sinusoids


class Seq2SeqCache(DynamicCache):
    """Self-attention KV cache plus the encoder memory, reordered together."""

    def __init__(self, memory: torch.Tensor, memory_valid: torch.Tensor):
        super().__init__()
        self.memory, self.memory_valid = memory, memory_valid  # (B, S, D), (B, S)

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        self.memory = self.memory.repeat_interleave(repeats, 0)
        self.memory_valid = self.memory_valid.repeat_interleave(repeats, 0)

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        self.memory, self.memory_valid = self.memory[indices], self.memory_valid[indices]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, x):  # (B, T, D) -> (B, H, T, D/H)
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x, source, mask, cache: DynamicCache | None = None, layer: int = 0):
        q, k, v = self._split(self.q(x)), self._split(self.k(source)), self._split(self.v(source))
        if cache is not None:
            k, v = cache.update(k, v, layer)  # append to the cached keys/values
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))  # (B, H, T, D/H)
        return self.o(out.transpose(1, 2).reshape(x.shape))


class DecoderLayer(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the encoder memory, feed-forward."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn, self.cross_attn = Attention(dim, heads), Attention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask, memory, memory_mask, cache, layer):
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h, mask, cache, layer))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory, memory_mask))
        return x + self.drop(self.ff(self.norm3(x)))


class TransformerDecoderLM(nn.Module):
    """Token embeddings (tied output) + sinusoidal positions + decoder layers."""

    def __init__(self, vocab_size: int, dim: int, heads: int, layers: int, ff_dim: int,
                 dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=dim ** -0.5)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ff_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, inputs_embeds=None, input_ids=None, attention_mask=None, position_ids=None,
                cache: Seq2SeqCache | None = None, use_cache: bool = True, logits_to_keep: int = 0,
                memory=None, memory_valid=None):
        """Returns an object with ``.logits`` (B, T or logits_to_keep, V). The memory comes from
        the arguments (training) or from the cache (decoding)."""
        x = inputs_embeds if inputs_embeds is not None else self.embed(input_ids)  # (B, T, D)
        if attention_mask.dim() == 2:  # a decoding step's padding mask (B, L) -> additive (B, 1, 1, L)
            attention_mask = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device) \
                .masked_fill(~attention_mask.bool(), torch.finfo(x.dtype).min)[:, None, None]
        if memory is None:
            memory, memory_valid = cache.memory, cache.memory_valid
        table = sinusoids(int(position_ids.max()) + 1, self.dim).to(x.device, x.dtype)
        x = x * math.sqrt(self.dim) + table[position_ids]  # (B, T, D)
        memory_mask = torch.zeros(memory_valid.shape, dtype=x.dtype, device=x.device)
        memory_mask = memory_mask.masked_fill(~memory_valid, torch.finfo(x.dtype).min)[:, None, None]
        for i, layer in enumerate(self.layers):
            x = layer(x, attention_mask, memory, memory_mask, cache if use_cache else None, i)
        x = self.norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return SimpleNamespace(logits=x @ self.embed.weight.T)  # (B, T, V)


class EncoderDecoder(nn.Module):
    """Same interface as SpeechLLM: ``forward`` gives the loss, ``generate`` decodes."""

    def __init__(self, subsample: nn.Module, encoder: TransformerStack,
                 decoder: TransformerDecoderLM, encoder_dim: int):
        super().__init__()
        self.subsample, self.encoder, self.decoder = subsample, encoder, decoder
        self.proj = nn.Linear(encoder_dim, decoder.dim)

    @property
    def backbone(self) -> nn.Module:
        """Its acoustic front end (models/backbones.py): fbank + Conv2D, or the Whisper encoder;
        ``features`` and ``feature_rate`` say what it reads."""
        return self.subsample

    def encode_audio(self, feats, lengths):
        """feats (B, T, D) (the backbone's features) -> memory (B, S, D'), valid (B, S)."""
        x, n = self.subsample(feats, lengths)  # (B, T, F) -> (B, S, C)
        hidden = self.encoder(x, n)  # (B, S, C)
        valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < n[:, None]
        return self.proj(hidden), valid  # (B, S, D)

    def _inputs(self, memory, before, after, targets=None):
        no_audio = memory.new_zeros(memory.shape[0], 0, self.decoder.dim)  # (B, 0, D)
        zeros = torch.zeros(memory.shape[0], dtype=torch.long, device=memory.device)
        return assemble(self.decoder.embed, no_audio, zeros, before, after, targets, True)

    def forward(self, feats, lengths, before, after, targets) -> torch.Tensor:
        memory, valid = self.encode_audio(feats, lengths)
        embeds, mask, text_valid, labels = self._inputs(memory, before, after, targets)
        return next_token_loss(self.decoder, embeds, mask, text_valid, labels, targets,
                               memory=memory, memory_valid=valid)

    @torch.no_grad()
    def generate(self, feats, lengths, before, after, eos_id, options: DecodingOptions,
                 max_new: torch.Tensor | None = None) -> list[list[int]]:
        memory, valid = self.encode_audio(feats, lengths)
        embeds, mask, text_valid, _ = self._inputs(memory, before, after)
        return generate(self.decoder, embeds, mask, text_valid, eos_id, options, max_new,
                        cache=Seq2SeqCache(memory, valid))
