"""Batched greedy and beam-search decoding from an ``inputs_embeds`` prefix, with the LLM's KV cache.

The prefix (prompt text + audio vectors, see :mod:`speechllama.models.llm`) is LEFT-padded so that every
row's next token sits at the same column. It is run once (prefill); then one token per step is fed with the
cache. A token's position id is the number of valid tokens before it, so a padded row decodes as it would
alone.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from ..errors import UsageError
from .llm_family import head_logits, llm_attention_mask


@dataclass(frozen=True)
class DecodingOptions:
    # number of beams; 1 = greedy decoding
    beam_size: int = 1

    # hard cap on the number of generated tokens per row (EOS not counted)
    max_new_tokens: int = 128

    # cap from the audio length, see token_budget(): ceil(seconds * this) + 4 tokens; 0 disables it
    max_tokens_per_second: float = 8.0

    # beam search ranks finished hypotheses by sum_logprob / length**length_penalty (0 = raw sum log-prob)
    length_penalty: float = 1.0

    # never generate an n-gram of this size twice in a row's output (a guard against loops); 0 disables
    no_repeat_ngram_size: int = 4

    # joint CTC/LLM decoding of transcripts (speechllama.models.ctc_prefix): the weight w of the CTC prefix
    # score, (1 - w) * LLM + w * CTC; None = automatic (DEFAULT_CTC_WEIGHT where the model allows it,
    # see SpeechToText), 0 = the LLM alone
    ctc_weight: float | None = None

    # joint decoding scores the LLM's best ctc_candidates next tokens per hypothesis with CTC
    ctc_candidates: int = 10

    # a model trained over a restricted output vocabulary (speech_llm.output_vocab=targets) decodes
    # over it too, at a fraction of the head's cost; True = over the LLM's whole vocabulary
    full_vocab: bool = False


def _verify_options(options: DecodingOptions) -> None:
    if options.beam_size < 1:
        raise UsageError(f"beam_size must be at least 1 (1 means greedy decoding), got {options.beam_size}.")
    if options.max_new_tokens < 0:
        raise UsageError(f"max_new_tokens must not be negative, got {options.max_new_tokens}.")
    if not options.max_tokens_per_second >= 0:
        raise UsageError(
            f"max_tokens_per_second must be >= 0 (0 disables it), got {options.max_tokens_per_second}."
        )
    if not math.isfinite(options.length_penalty):
        raise UsageError(f"length_penalty must be a finite number, got {options.length_penalty}.")
    if options.ctc_weight is not None and not 0 <= options.ctc_weight <= 1:
        raise UsageError(f"ctc_weight must be in [0, 1] (0 = the LLM alone), got {options.ctc_weight}.")
    if options.ctc_candidates < 1:
        raise UsageError(f"ctc_candidates must be at least 1, got {options.ctc_candidates}.")
    if options.no_repeat_ngram_size < 0:
        raise UsageError(
            f"no_repeat_ngram_size must be >= 0 (0 disables it), got {options.no_repeat_ngram_size}."
        )


def token_budget(audio_seconds: torch.Tensor, options: DecodingOptions) -> torch.Tensor:
    """Per-row cap on new tokens from the audio duration: min(max_new_tokens, ceil(seconds * rate) + 4)."""
    cap = torch.full(audio_seconds.shape, options.max_new_tokens, dtype=torch.long)
    if options.max_tokens_per_second > 0:
        from_audio = torch.ceil(audio_seconds.double().cpu() * options.max_tokens_per_second).long() + 4
        cap = torch.minimum(cap, from_audio)
    return cap


@torch.no_grad()
def generate(
    model: nn.Module,
    prefix_embeds: torch.Tensor,
    prefix_mask_4d: torch.Tensor,
    prefix_valid: torch.Tensor,
    eos_id: int | Sequence[int],
    options: DecodingOptions = DecodingOptions(),
    max_new: torch.Tensor | None = None,
    cache: DynamicCache | None = None,
    scorer=None,
    vocab: torch.Tensor | None = None,
) -> list[list[int]]:
    """Decode every row of a left-padded prefix; returns the new token ids of each row, without the EOS.

    prefix_embeds (B, P, C); prefix_mask_4d (B, 1, P, P) additive, from ``audio_text_mask``; prefix_valid
    (B, P) bool with each row's last column valid; eos_id one id or several; max_new an optional (B,) per-row
    cap (further capped by ``options.max_new_tokens``); ``cache`` an empty cache to fill (default a
    DynamicCache; the encoder-decoder passes one that also carries its encoder memory); ``scorer`` a
    :class:`speechllama.models.ctc_prefix.CTCPrefixScorer` over the same rows for joint CTC/LLM decoding
    (beam search, even at beam_size 1); ``vocab`` (V',) token ids: a transformers LLM scores only
    these (the others get -inf). Call ``model.eval()`` first (dropout).
    """
    _verify_options(options)
    B, P, _ = prefix_embeds.shape
    if prefix_valid.shape != (B, P) or prefix_mask_4d.shape != (B, 1, P, P):
        raise ValueError(
            f"prefix_valid {tuple(prefix_valid.shape)} and prefix_mask_4d {tuple(prefix_mask_4d.shape)} "
            f"do not fit prefix_embeds {tuple(prefix_embeds.shape)}."
        )
    if not bool(prefix_valid[:, -1].all()):
        raise ValueError("the prefix must be LEFT-padded: the last column of prefix_valid must be all True.")
    caps = torch.full((B,), options.max_new_tokens, dtype=torch.long)
    if max_new is not None:
        caps = torch.minimum(caps, torch.as_tensor(max_new, dtype=torch.long).cpu())
    eos = {int(e) for e in eos_id} if isinstance(eos_id, (list, tuple, set)) else {int(eos_id)}

    out: list[list[int]] = [[] for _ in range(B)]
    rows = torch.nonzero(caps > 0).flatten()  # rows with a zero budget stay empty
    if len(rows) == 0:
        return out
    embeds, mask_4d, valid = prefix_embeds[rows], prefix_mask_4d[rows], prefix_valid[rows]
    if cache is not None and len(rows) < B:
        cache.batch_select_indices(rows)
    model = _Scorer(model, vocab)
    if scorer is not None:
        found = _beam_search(model, embeds, mask_4d, valid, eos, options, caps[rows], cache,
                             scorer if len(rows) == B else scorer.rows(rows))
    else:
        search = _greedy if options.beam_size == 1 else _beam_search
        found = search(model, embeds, mask_4d, valid, eos, options, caps[rows], cache)
    for r, tokens in zip(rows.tolist(), found):
        out[r] = tokens
    return out


# ---------------------------------------------------------------------------------------------------------
# Model calls: prefill once, then one token per step against the cache
# ---------------------------------------------------------------------------------------------------------


class _Scorer:
    """The model's next-token logits (N, V) at the last position, over the whole vocabulary or,
    with ``vocab``, through the decoder and only those rows of the output head."""

    def __init__(self, model, vocab: torch.Tensor | None):
        self.model, self.vocab, self.config = model, vocab, getattr(model, "config", None)
        self.hf = hasattr(model, "get_decoder")  # a transformers LM (the seq2seq decoder is not)
        if vocab is not None:  # the head's rows of the vocabulary, gathered once
            head = model.get_output_embeddings().weight  # (V, H)
            self.rows, self.size = head[vocab], head.shape[0]  # (V', H)

    def __call__(self, **kwargs) -> torch.Tensor:
        if not self.hf:
            return self.model(**kwargs, logits_to_keep=1).logits[:, -1].float()  # (N, V)
        hidden = self.model.get_decoder()(**kwargs).last_hidden_state[:, -1]  # (N, H)
        if self.vocab is None:  # the whole head, on a 2-D input (head_logits says why)
            return head_logits(self.model, hidden).float()  # (N, V)
        part = head_logits(self.model, hidden, self.vocab, self.rows).float()  # (N, V')
        size = self.size
        full = part.new_full((len(part), size), -math.inf)  # (N, V)
        full[:, self.vocab] = part
        return full


def _prefill(model: _Scorer, embeds, mask_4d, valid, cache=None) -> tuple[torch.Tensor, DynamicCache]:
    """Run the whole prefix once; returns the logits of its last position (B, V) and the filled cache."""
    position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, P): pads get 0, they are never attended
    cache = DynamicCache(config=model.config) if cache is None else cache
    logits = model(inputs_embeds=embeds, attention_mask=llm_attention_mask(model.config, mask_4d),
                   position_ids=position_ids, cache=cache, use_cache=True)
    return logits, cache  # (B, V)


def _step(model, tokens, cache: DynamicCache, kv_valid: torch.Tensor) -> torch.Tensor:
    """Feed one new token per row (N,); kv_valid (N, L) marks the cached positions it may attend to.

    The mask is the 2-D padding mask (N, L + 1): the model makes its causal and sliding-window
    masks from it and from its cache (whose sliding layers keep only the window's keys)."""
    position_ids = kv_valid.long().sum(-1, keepdim=True)  # (N, 1): number of valid tokens before it
    attend = torch.cat([kv_valid, kv_valid.new_ones(len(tokens), 1)], dim=1)  # (N, L + 1)
    return model(input_ids=tokens[:, None].to(kv_valid.device), attention_mask=attend,
                 position_ids=position_ids, cache=cache, use_cache=True)  # (N, V)


def _ban_repeats(scores: torch.Tensor, sequences: list[list[int]], n: int) -> torch.Tensor:
    """Set to -inf every token that would complete an n-gram already present in its row's sequence."""
    if n <= 0:
        return scores
    for row, seq in enumerate(sequences):
        if len(seq) < n:
            continue
        tail = seq[len(seq) - n + 1:]
        banned = [seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i:i + n - 1] == tail]
        if banned:
            scores[row, banned] = -math.inf
    return scores


# ---------------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------------


def _greedy(model, embeds, mask_4d, valid, eos: set[int], options, caps, cache=None) -> list[list[int]]:
    """Greedy decoding; rows that end (EOS or their cap) are dropped from the batch and the cache."""
    logits, cache = _prefill(model, embeds, mask_4d, valid, cache)  # (B, V)
    tokens: list[list[int]] = [[] for _ in range(len(caps))]
    live = list(range(len(caps)))  # original row of each cache row
    kv_valid, caps = valid, caps.tolist()
    while live:
        logits = _ban_repeats(logits, [tokens[r] for r in live], options.no_repeat_ngram_size)
        next_tokens = logits.argmax(-1).tolist()  # (N,)
        keep = []
        for i, (r, t) in enumerate(zip(live, next_tokens)):
            if t in eos:
                continue
            tokens[r].append(t)
            if len(tokens[r]) < caps[r]:
                keep.append(i)
        if not keep:
            break
        if len(keep) < len(live):
            index = torch.tensor(keep, device=kv_valid.device)
            cache.batch_select_indices(index)
            kv_valid = kv_valid[index]
        live = [live[i] for i in keep]
        new = torch.tensor([tokens[r][-1] for r in live])  # (N,)
        logits = _step(model, new, cache, kv_valid)  # (N, V)
        kv_valid = torch.cat([kv_valid, kv_valid.new_ones(len(live), 1)], dim=1)  # (N, L + 1)
    return tokens


@dataclass
class _BeamRow:
    """Search state of one batch row: its live beams and finished hypotheses (tokens, sum log-prob, ended)."""

    cap: int
    beams: list[tuple[list[int], float]]
    finished: list[tuple[list[int], float, bool]]

    def best(self, length_penalty: float) -> list[int]:
        def score(hyp):
            tokens, logprob, ended = hyp
            return logprob / max(len(tokens) + ended, 1) ** length_penalty

        return max(self.finished, key=score)[0] if self.finished else []


def _beam_search(model, embeds, mask_4d, valid, eos: set[int], options, caps, cache=None,
                 scorer=None) -> list[list[int]]:
    """Beam search: a row ends once it has beam_size finished hypotheses or reaches its cap.

    As in whisper, each step keeps the best beam_size non-EOS continuations among the 2*beam_size best
    candidates; as in transformers, an EOS candidate becomes a finished hypothesis only if it ranks among the
    best beam_size (so beam_size=1 is exactly greedy). The finished hypothesis with the best
    sum_logprob / length**length_penalty wins, where length counts the EOS when there is one. With a
    ``scorer`` the sums are joint CTC/LLM scores, and only the tokens it scores can follow a beam.
    """
    B, K = len(caps), options.beam_size
    logits, cache = _prefill(model, embeds, mask_4d, valid, cache)  # (B, V)
    cache.batch_repeat_interleave(K)
    logits = logits.repeat_interleave(K, dim=0)  # (B*K, V)
    kv_valid = valid.repeat_interleave(K, dim=0)  # (B*K, P)
    states = [_BeamRow(int(c), [([], 0.0)] + [([], -math.inf)] * (K - 1), []) for c in caps.tolist()]
    if scorer is not None:
        scorer.start(K)
    live = list(range(B))  # rows still searching, in cache order (K cache rows each)
    step = 0
    while live:
        step += 1
        seqs = [tokens for r in live for tokens, _ in states[r].beams]
        logprobs = _ban_repeats(F.log_softmax(logits, dim=-1), seqs, options.no_repeat_ngram_size)  # (N, V)
        if scorer is not None:
            logprobs = scorer.adjust(logprobs, eos)  # joint score increments, -inf off the candidates
        V = logprobs.shape[-1]
        sums = torch.tensor([s for r in live for _, s in states[r].beams], device=logprobs.device)
        candidates = (sums[:, None] + logprobs).view(len(live), K * V)  # (A, K*V)
        top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=-1)  # (A, 2K)
        source, still = [], []
        for i, (r, scores, index) in enumerate(zip(live, top_scores.tolist(), top_index.tolist())):
            beam_src = _advance_row(states[r], scores, index, V, K, eos, step)
            if beam_src is not None:
                still.append(r)
                source.extend(i * K + b for b in beam_src)
        if not still:
            break
        index = torch.tensor(source, device=kv_valid.device)
        cache.batch_select_indices(index)  # reorder by beam origin and drop ended rows, in one go
        kv_valid = kv_valid[index]
        live = still
        new = torch.tensor([tokens[-1] for r in live for tokens, _ in states[r].beams])  # (N,)
        if scorer is not None:
            scorer.select(index, new)
        logits = _step(model, new, cache, kv_valid)  # (N, V)
        kv_valid = torch.cat([kv_valid, kv_valid.new_ones(len(new), 1)], dim=1)  # (N, L + 1)
    return [state.best(options.length_penalty) for state in states]


def _advance_row(state: _BeamRow, scores, index, V: int, K: int, eos: set[int], step: int):
    """Take the best candidates of one row; returns the source beam of each new beam, or None once it ends."""
    new_beams, sources = [], []
    for rank, (score, flat) in enumerate(zip(scores, index)):
        if score == -math.inf or len(new_beams) == K:
            break
        src, token = divmod(flat, V)
        tokens = state.beams[src][0]
        if token in eos:
            if rank < K and len(state.finished) < K:  # an ending counts only among this step's top K
                state.finished.append((tokens, score, True))
        else:
            new_beams.append((tokens + [token], score))
            sources.append(src)
    if step >= state.cap:  # out of budget: the live beams end here, unfinished
        state.finished.extend((tokens, score, False) for tokens, score in new_beams)
        return None
    if len(state.finished) >= K or not new_beams:
        return None
    while len(new_beams) < K:  # fewer candidates than beams (tiny vocabularies): pad with dead beams
        new_beams.append((new_beams[0][0], -math.inf))
        sources.append(sources[0])
    state.beams = new_beams
    return sources
