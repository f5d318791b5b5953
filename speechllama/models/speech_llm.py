"""Speech-LLaMA: CTC compressor -> ctc_compress -> audio encoder -> frozen LLM (+ LoRA) -> text.

Shape legend: B batch, T fbank frames, S compressed audio vectors, L assembled sequence length,
H LLM hidden size, V LLM vocabulary. Every row of the LLM input is laid out as

    [before: instruction text][S audio vectors][after: text][target tokens + eos]

and rows are LEFT-padded, so generation continues every row at the same column.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .audio_encoder import AudioEncoder
from .ctc_compressor import CTCCompressor, ctc_compress
from .ctc_prefix import CTCPrefixScorer
from .decode import DecodingOptions, generate
from .llm import audio_text_mask
from .llm_family import head_logits, llm_attention_mask, llm_inputs
from .token_spans import token_compress

IGNORE = -100  # label of positions that carry no loss


class SpeechLLM(nn.Module):
    """Composes the parts it is given (see ``models/build.py`` for the wiring from a config)."""

    def __init__(self, compressor: CTCCompressor, encoder: AudioEncoder, llm: nn.Module,
                 compression: str, causal_audio: bool, freeze_compressor: bool = True,
                 zero_audio: bool = False, vocab: OutputVocab | None = None,
                 token_spans: tuple | None = None):
        super().__init__()
        # (CTC tokenizer, LLM tokenizer): compress to spans of the LLM's tokens of the greedy
        # transcript (speech_llm.spans=llm_tokens), each starting from that token's embedding
        # when the encoder is gated (the piece prior); None: one vector per greedy label's run
        self.token_spans = token_spans
        self.compressor, self.encoder, self.llm = compressor, encoder, llm
        self.vocab = vocab  # the restricted output vocabulary (speech_llm.output_vocab), or None
        self.compression, self.causal_audio = compression, causal_audio
        self.freeze_compressor = freeze_compressor
        self.zero_audio = zero_audio  # control: same layout and training, no audio information
        if freeze_compressor:
            self.compressor.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_compressor:
            self.compressor.eval()  # a frozen compressor never uses dropout
        return self

    def encode_audio(self, feats: torch.Tensor, lengths: torch.Tensor, return_ctc: bool = False):
        """feats (B, T, 80) normalised fbank -> audio embeddings (B, S, H), lengths (B,); with
        ``return_ctc`` also the compressor's CTC logits (B, T', V_ctc) and their lengths (B,)."""
        prior = None
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_compressor):
            hidden, logits, frames = self.compressor(feats, lengths)  # (B, T', C), (B, T', V_ctc)
            if self.token_spans is not None:  # one vector per LLM token of the greedy transcript
                compressed, n, ids = token_compress(hidden, logits, frames, *self.token_spans,
                                                    mode=self.compression)  # (B, S, C), (B, S)
                labels = None
                if self.encoder.gate is not None:
                    with torch.no_grad():  # the frozen LLM's own embedding of each token
                        prior = self.llm.get_input_embeddings()(ids)  # (B, S, H)
            elif self.encoder.piece_embeds is None:
                compressed, n = ctc_compress(hidden, logits, frames, self.compression)  # (B, S, C)
                labels = None
            else:  # the piece prior also needs each vector's greedy label: compress it alongside
                # (a run shares one label, so its mean is that label exactly: ids < 2**24)
                both = torch.cat([hidden.float(), logits.argmax(-1, keepdim=True).float()], dim=-1)
                both, n = ctc_compress(both, logits, frames, self.compression)  # (B, S, C + 1)
                compressed, labels = both[..., :-1], both[..., -1].round().long()  # (B, S, C), (B, S)
        audio = self.encoder(compressed, n, labels, prior)  # (B, S, H)
        audio = audio * 0 if self.zero_audio else audio
        return (audio, n, (logits, frames)) if return_ctc else (audio, n)

    def assemble(self, audio, audio_lengths, before, after, targets=None):
        return assemble(self.llm.get_input_embeddings(), audio, audio_lengths, before, after,
                        targets, self.causal_audio)

    def forward(self, feats, lengths, before, after, targets) -> torch.Tensor:
        """Mean cross-entropy over the target tokens (eos included)."""
        audio, n = self.encode_audio(feats, lengths)
        embeds, mask, valid, labels = self.assemble(audio, n, before, after, targets)
        return next_token_loss(self.llm, embeds, mask, valid, labels, targets, self.vocab)

    @torch.no_grad()
    def generate(self, feats, lengths, before, after, eos_id, options: DecodingOptions,
                 max_new: torch.Tensor | None = None, ctc_map: torch.Tensor | None = None,
                 ) -> list[list[int]]:
        """Decode every row; with ``ctc_map`` (the CTC label of each LLM token, for transcripts whose
        tokens are the compressor's labels) and a positive ``options.ctc_weight``, joint CTC/LLM
        decoding (:mod:`speechllama.models.ctc_prefix`)."""
        audio, n, (logits, frames) = self.encode_audio(feats, lengths, return_ctc=True)
        embeds, mask, valid, _ = self.assemble(audio, n, before, after)
        embeds, mask = llm_inputs(self.llm, embeds, mask)
        scorer = None
        if ctc_map is not None and options.ctc_weight:
            scorer = CTCPrefixScorer(logits.float().log_softmax(-1), frames, ctc_map,
                                     options.ctc_weight, options.ctc_candidates)
        vocab = None if options.full_vocab or self.vocab is None else self.vocab.ids
        return generate(self.llm, embeds, mask, valid, eos_id, options, max_new, scorer=scorer,
                        vocab=vocab)


def assemble(embed: nn.Module, audio: torch.Tensor, audio_lengths: torch.Tensor,
             before: Sequence[Sequence[int]], after: Sequence[Sequence[int]],
             targets: Sequence[Sequence[int]] | None, causal_audio: bool):
    """Left-padded LM input: embeds (B, L, H), 4-D mask, valid (B, L), labels (B, L) or None.

    Row b is ``[before[b]][audio[b, :audio_lengths[b]]][after[b]][targets[b]]``; audio may have
    length 0 (the encoder-decoder's decoder sees text only).
    """
    device = audio.device
    rows, labels, starts = [], [], []
    for b in range(audio.shape[0]):
        tgt = list(targets[b]) if targets is not None else []
        text = torch.tensor([*before[b], *after[b], *tgt], dtype=torch.long, device=device)
        t = embed(text).to(audio.dtype)  # (n_text, H)
        nb = len(before[b])
        rows.append(torch.cat([t[:nb], audio[b, : audio_lengths[b]], t[nb:]]))  # (L_b, H)
        starts.append(nb)
        lab = torch.full((rows[-1].shape[0],), IGNORE, dtype=torch.long, device=device)
        if tgt:
            lab[-len(tgt):] = torch.tensor(tgt, device=device)
        labels.append(lab)
    length = max(r.shape[0] for r in rows)
    pad = [length - r.shape[0] for r in rows]
    embeds = torch.stack([F.pad(r, (0, 0, p, 0)) for r, p in zip(rows, pad)])  # (B, L, H)
    lab = torch.stack([F.pad(x, (p, 0), value=IGNORE) for x, p in zip(labels, pad)])  # (B, L)
    pad_t = torch.tensor(pad, device=device)
    valid = torch.arange(length, device=device)[None, :] >= pad_t[:, None]  # (B, L)
    mask = audio_text_mask(pad_t + torch.tensor(starts, device=device), audio_lengths, valid,
                           causal_audio=causal_audio)
    return embeds, mask, valid, (lab if targets is not None else None)


def next_token_loss(lm: nn.Module, embeds, mask, valid, labels, targets, vocab=None,
                    **kwargs) -> torch.Tensor:
    """Mean cross-entropy of ``lm`` on the labelled (target) positions of an assembled batch.

    With ``vocab`` (an :class:`OutputVocab`), a transformers LLM's head is applied to those
    positions for the vocabulary's tokens only: the cross-entropy of the softmax over them (exact
    for that objective; the full head of Gemma-3-270M is 262,144 rows)."""
    keep = max(len(t) for t in targets) + 1  # the last positions hold every row's target
    position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)
    mask = llm_attention_mask(getattr(lm, "config", None), mask)
    labels = labels[:, -keep + 1:]  # (B, keep-1)
    if vocab is None:
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                 logits_to_keep=keep, **kwargs)
        logits = out.logits[:, :-1].float()  # (B, keep-1, V) predicts the next token
    else:
        out = lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                               **kwargs)
        hidden = out.last_hidden_state[:, -keep:-1]  # (B, keep-1, H)
        logits = head_logits(lm, hidden, vocab.ids).float()  # (B, keep-1, V')
        labels = vocab.positions(labels)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE)


class OutputVocab(nn.Module):
    """The LLM tokens a model is trained (and by default decodes) over: ``ids`` (V',) sorted.

    Built from the training targets (every token any target uses, EOS included) plus the byte
    tokens of the tokenizer, so any text can still be spelled; saved with the model's weights."""

    def __init__(self, ids: torch.Tensor, size: int):
        super().__init__()
        ids = torch.as_tensor(ids, dtype=torch.long).unique()  # sorted
        if len(ids) == 0 or int(ids[0]) < 0 or int(ids[-1]) >= size:
            raise ValueError(f"output vocabulary ids must lie in [0, {size})")
        index = torch.full((size,), IGNORE, dtype=torch.long)
        index[ids] = torch.arange(len(ids))
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("index", index, persistent=False)

    def positions(self, labels: torch.Tensor) -> torch.Tensor:
        """LLM token ids (IGNORE kept) -> positions in ``ids``; a token outside is an error."""
        out = torch.where(labels == IGNORE, labels, self.index[labels.clamp(min=0)])
        if bool(((out == IGNORE) & (labels != IGNORE)).any()):
            raise ValueError("a target token is outside the model's output vocabulary")
        return out
