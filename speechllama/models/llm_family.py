"""The contract between Speech-LLaMA and a frozen decoder-only LLM, and the families that meet it.

What the rest of speechllama needs from an LLM (and nothing more):

- a transformers causal LM that takes ``inputs_embeds`` (audio vectors are spliced between text
  token embeddings) with explicit ``position_ids`` (rows are left-padded);
- a 4-D attention mask (B, 1, T, T) used as given (:func:`speechllama.models.llm.audio_text_mask`:
  the audio block may be bidirectional, text stays causal). Families whose config has
  sliding-window layers (``layer_types`` with ``"sliding_attention"``, e.g. Gemma 3) get it in the
  dict form ``{"full_attention": M, "sliding_attention": M restricted to the window}``
  (:func:`llm_attention_mask`), so every layer sees what it was trained to see;
- a KV cache (``transformers.DynamicCache(config=...)``) for prefill-then-step decoding;
- the LoRA target modules (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` in every family here);
- the scale of its input embeddings: ``get_input_embeddings()(ids)`` is what the LLM reads, and
  audio vectors must come at that scale. Gemma multiplies the table by sqrt(hidden_size) inside
  the embedding module (:func:`embed_scale`), LLaMA and Qwen do not;
- an output head: ``get_output_embeddings()`` (tied to the input table in Gemma), with Gemma 2's
  final logit soft-capping honoured where a config sets it (:func:`head_logits`).

A family is chosen from the model's own ``config.model_type``, never from a folder name; an
unsupported one is a one-line error naming it and the supported ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError


@dataclass(frozen=True)
class LLMFamily:
    name: str  # what the docs call it
    model_types: tuple[str, ...]  # config.model_type values of transformers
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    scaled_embeddings: bool = False  # the embedding module multiplies by sqrt(hidden_size)


FAMILIES = (
    LLMFamily("LLaMA", ("llama",)),
    LLMFamily("Gemma 3", ("gemma3_text",), scaled_embeddings=True),
    LLMFamily("Qwen 2", ("qwen2",)),
    LLMFamily("Qwen 3", ("qwen3",)),
)
SUPPORTED = tuple(t for f in FAMILIES for t in f.model_types)


class UnsupportedLLMError(UserError, ValueError):
    """An LLM whose architecture speechllama does not support (names its model_type)."""


def family_of(config) -> LLMFamily:
    """The family of a transformers config, from ``config.model_type``."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedLLMError(f"unsupported LLM architecture: model_type {model_type!r} "
                              f"(supported: {', '.join(SUPPORTED)})")


def embed_scale(config) -> float:
    """The factor between the embedding table's rows and what ``get_input_embeddings()`` returns."""
    return float(config.hidden_size) ** 0.5 if family_of(config).scaled_embeddings else 1.0


def has_sliding_layers(config) -> bool:
    return "sliding_attention" in (getattr(config, "layer_types", None) or ())


def llm_attention_mask(config, mask: torch.Tensor):
    """``mask`` (B, 1, Q, K) additive, the Q queries being the last Q of the K keys (a prefill
    or a training batch: Q = K), as the LLM of ``config`` takes it: unchanged, or for models
    with sliding-window layers the dict of a full mask and one also masked beyond the window.
    (Decoding steps pass a 2-D padding mask instead: ``speechllama.decode._step``.)

    Distances are counted in columns; rows are left-padded, so that equals the distance in tokens
    between two valid positions. A query always sees itself (distance 0), so no row is empty.
    """
    if config is None or not has_sliding_layers(config) or getattr(config, "sliding_window", None) is None:
        return mask
    Q, K = mask.shape[-2:]
    keys = torch.arange(K, device=mask.device)
    far = (keys[K - Q:, None] - keys[None, :]) >= config.sliding_window  # (Q, K) [query, key]
    return {"full_attention": mask,
            "sliding_attention": mask.masked_fill(far, torch.finfo(mask.dtype).min)}


def head_logits(lm, hidden: torch.Tensor, vocab: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the LLM's output head for ``hidden`` (..., H): over the whole vocabulary (..., V),
    or only over the token ids ``vocab`` (V',) in that order (..., V'), at V'/V of the cost.
    ``rows``: the head's rows of ``vocab`` already gathered (decoding gathers them once)."""
    weight = lm.get_output_embeddings().weight if rows is None else rows  # (V, H)
    if vocab is not None and rows is None:
        weight = weight[vocab]  # (V', H)
    # a 2-D contiguous input: bf16 F.linear on a 3-D slice goes through bmm with the weight
    # expanded per row (a (B, H, V) copy: 14 s for Gemma's head at B=16; docs/bench.md)
    flat = hidden.reshape(-1, hidden.shape[-1]).contiguous()  # (N, H)
    logits = F.linear(flat, weight.to(hidden.dtype)).view(*hidden.shape[:-1], weight.shape[0])
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def llm_inputs(lm, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``embeds`` and the additive ``mask`` in the dtype of the LLM's weights (bf16 weights decode
    without autocast); the mask's "masked" value becomes that dtype's own minimum."""
    dtype = lm.get_input_embeddings().weight.dtype
    return embeds.to(dtype), mask.clamp(min=torch.finfo(dtype).min).to(dtype)
