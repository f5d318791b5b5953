"""Token-span compression: frames -> one vector per LLM token of the compressor's greedy transcript.

``ctc_compress`` shortens the compressor's frames to one vector per greedy CTC label; with character
labels the LLM then reads one vector per *character*, which it reads poorly. Here the greedy CTC
transcript is re-tokenised by the LLM's own tokenizer and the frames are grouped into one span per
LLM token, so each compressed vector's piece prior is exactly the embedding of a token the LLM
knows (step 0 is a soft cascade: the LLM reads the compressor's transcript in its own tokens).

Shape legend: B batch, T frames, C width, S LLM tokens (spans) of the longest row, K the most
tokens that share one frame (1 unless a token has no frames of its own, see ``token_spans``).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from ..errors import UsageError
from ..text import word_start_prefix

SPAN_MODES = ("average", "remove_blank")
WORD_BOUNDARY = "\u2581"  # sentencepiece's "▁"

_LABEL_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LLM_INFO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def label_texts(ctc_tokenizer) -> tuple[list[str], np.ndarray]:
    """(text of each CTC label, its length in characters): the sentencepiece piece with "▁" as a
    space; "" for the blank, unk, control and byte pieces (such labels add no text: their frames
    fall into the span of the token before them). Cached per tokenizer object."""
    try:
        return _LABEL_TEXTS[ctc_tokenizer]
    except (KeyError, TypeError):
        pass
    sp = getattr(ctc_tokenizer, "sp", None)
    if sp is None:
        raise UsageError("token_spans needs sentencepiece CTC labels (a CTCTokenizer, "
                        "compressor.labels=sentencepiece); LLM-token labels are already LLM "
                        "tokens: use ctc_compress")
    texts = []
    for v in range(sp.get_piece_size()):
        skip = sp.is_control(v) or sp.is_unknown(v) or sp.is_byte(v)
        texts.append("" if skip else sp.id_to_piece(v).replace(WORD_BOUNDARY, " "))
    out = (texts, np.array([len(s) for s in texts], dtype=np.int64))
    try:
        _LABEL_TEXTS[ctc_tokenizer] = out
    except TypeError:  # not weak-referenceable: no cache
        pass
    return out


def _llm_info(llm_tokenizer) -> tuple[str, int]:
    """(word-start prefix, id of an empty transcript's one span), cached per tokenizer object."""
    try:
        return _LLM_INFO[llm_tokenizer]
    except (KeyError, TypeError):
        pass
    if not getattr(llm_tokenizer, "is_fast", False):
        raise UsageError("token_spans needs a fast (Rust) Hugging Face tokenizer: it maps the "
                         "LLM's tokens to the CTC labels' frames by their character offsets "
                         "(return_offsets_mapping), which slow tokenizers do not give")
    prefix = word_start_prefix(llm_tokenizer)
    ids = llm_tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    empty_id = ids[0] if len(ids) == 1 else llm_tokenizer.eos_token_id
    if empty_id is None:
        raise UsageError("token_spans: the LLM tokenizer has neither a word-start token nor an eos "
                         "token to stand for an empty transcript")
    info = (prefix, int(empty_id))
    try:
        _LLM_INFO[llm_tokenizer] = info
    except TypeError:
        pass
    return info


def _anchor_chars(offsets, n_chars: int) -> np.ndarray:
    """The character each token starts from: its offset's start, moved back over the characters
    no earlier token covers (a space that byte-level BPE trims off " world", or the trimmed "Ġ"
    token's own space) but never onto an earlier token's anchor character; the first token starts
    at character 0 (the word-start prefix). That is the recurrence
    ``a[i] = min(start[i], max(covered[i], a[i-1] + 1))`` (covered[i]: the furthest end of the
    tokens before i), solved by Jacobi steps from ``min(start, covered)``: the ``a[i-1] + 1`` term
    binds only after a token with empty offsets, so one or two vectorised steps suffice."""
    bounds = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # (n_tok, 2)
    start = bounds[:, 0]
    covered = np.concatenate(([0], np.maximum.accumulate(bounds[:-1, 1])))
    a = np.minimum(start, covered)
    a[0] = 0
    while True:
        step = np.minimum(start, np.maximum(covered, np.concatenate(([-1], a[:-1])) + 1))
        step[0] = 0
        if np.array_equal(step, a):
            return a.clip(0, n_chars - 1)
        a = step


def token_spans(labels: torch.Tensor, lengths: torch.Tensor, ctc_tokenizer, llm_tokenizer,
                mode: str = "average", blank: int = 0,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group frames into one span per LLM token of the greedy CTC transcript.

    labels (B, T) greedy CTC labels (argmax), lengths (B,) valid frames (1 <= lengths <= T) ->

    - slot (B, T, K) long: ``slot[b, t, k]`` is the index of the k-th LLM-token span that frame t
      belongs to, or -1 (padding frames; blank frames in "remove_blank" mode; unused k). K = 1 in
      the usual case where every token has a frame of its own (see "shared frames" below);
    - new_lengths (B,) long: the number of spans (= LLM tokens) of each row, >= 1;
    - token_ids (B, S) long: the LLM token id of each span, 0-padded past new_lengths.

    Per row: the valid frames' labels collapse into runs (a label repeated after a blank is a new
    label, as in CTC). Each non-blank label contributes its sentencepiece piece with "▁" as a space
    (one character for a "char" model); unk, control and byte pieces contribute no text (unk is
    skipped, not replaced by a placeholder: its frames join the span of the token before it).
    Spaces are collapsed and stripped, and the text gets the LLM's word-start prefix
    (``word_start_prefix``: the form its training targets use). Every character knows the first
    frame of its label's run (the prefix's characters: the first non-blank run of the row). The text
    is tokenised by the LLM tokenizer (``add_special_tokens=False``, offsets; a slow tokenizer is a
    ValueError), so ``token_ids[b, :new_lengths[b]] == llm_tokenizer(prefix + transcript)`` exactly.

    A token's anchor is the frame of its first character: its offset's start, extended back over
    the characters no earlier token covers (so " world" starts at its space's "▁" label whether or
    not the tokenizer trims offsets; a lone "Ġ" token gets its space), the first token's is the
    prefix. Consecutive tokens with the same anchor form a group; a group's frames run from its
    anchor up to (not including) the next group's anchor, so blank frames after a label belong to
    the token before them; the first group starts at frame 0 (leading blanks) and the last ends at
    ``lengths[b]``. In "remove_blank" mode only the non-blank frames contribute (each span still has
    at least its anchor frame).

    Shared frames (the representation): a token whose first character belongs to the same label as
    the next token's (the prefix space as a token of its own; one character split into several byte
    tokens; several LLM tokens inside one multi-character piece) has no frame of its own. Rather
    than merging it (its token id would be lost) every token of a group gets the group's frames, so
    a frame may belong to K > 1 spans: hence slot's last axis. The spans of a group then share their
    mean vector and differ by their piece prior (their token embedding).

    A row with an empty transcript is ONE span, whose token id is the LLM's word-start token (the
    single token of ``word_start_prefix``, e.g. "Ġ" for SmolLM2) or, when the prefix is "" or not
    one token, its eos id. Its frames: all its valid frames, except that "remove_blank" drops the
    blank ones where the row has a non-blank label without text ("▁" or unk only); a row whose
    valid frames are all blank keeps them all in both modes (as ``ctc_compress`` does).
    """
    if mode not in SPAN_MODES:
        raise UsageError(f"unknown token-span mode {mode!r}; choose one of {SPAN_MODES}")
    if labels.dim() != 2 or lengths.shape != labels.shape[:1]:
        raise ValueError(f"token_spans needs labels (B, T) and lengths (B,), got "
                         f"{tuple(labels.shape)} and {tuple(lengths.shape)}")
    b, t = labels.shape
    if bool((lengths < 1).any()):
        raise ValueError("token_spans needs at least one valid frame per row")
    if bool((lengths > t).any()):
        raise ValueError(f"token_spans: lengths {lengths.tolist()} exceed the {t} frames")
    texts, text_len = label_texts(ctc_tokenizer)
    prefix, empty_id = _llm_info(llm_tokenizer)
    lab = labels.detach().cpu().numpy()
    lens = lengths.detach().cpu().tolist()

    # 1. the transcript text of each row and the frame of each of its characters
    full_texts, char_frames = [], []
    for r in range(b):
        x = lab[r, :lens[r]]
        starts = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1])))  # run starts
        starts = starts[x[starts] != blank]  # non-blank runs, in order
        if len(starts) == 0:
            full_texts.append(None)
            char_frames.append(None)
            continue
        run_labels = x[starts].tolist()
        text = "".join([texts[v] for v in run_labels])
        frames = np.repeat(starts, text_len[run_labels])  # (n_chars,)
        code = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        space = code == 32
        keep = ~(space & np.concatenate(([True], space[:-1])))  # collapse doubles, strip the left
        if keep.any() and space[np.flatnonzero(keep)[-1]]:  # strip the right (one space at most)
            keep[np.flatnonzero(keep)[-1]] = False
        if not keep.any():
            full_texts.append(None)
            char_frames.append(None)
            continue
        text = code[keep].tobytes().decode("utf-32-le")
        full_texts.append(prefix + text)
        char_frames.append(np.concatenate((np.full(len(prefix), starts[0]), frames[keep])))

    # 2. the LLM tokens of all rows at once (Rust, batched)
    todo = [r for r in range(b) if full_texts[r] is not None]
    enc = {"input_ids": [], "offset_mapping": []}
    if todo:
        enc = llm_tokenizer([full_texts[r] for r in todo], add_special_tokens=False,
                            return_offsets_mapping=True)
    if todo and "offset_mapping" not in enc:
        raise ValueError("token_spans: the LLM tokenizer gives no character offsets")

    # 3. per row: token anchors -> groups -> (frame -> first token, tokens in its group)
    ids_rows, first_rows, size_rows = [], [], []
    by_row = dict(zip(todo, zip(enc["input_ids"], enc["offset_mapping"])))
    for r in range(b):
        n = lens[r]
        ids, offsets = by_row.get(r, ([], []))
        if not ids:  # empty transcript: one span
            size = np.ones(n, dtype=np.int64)
            if mode == "remove_blank" and (lab[r, :n] != blank).any():
                size[lab[r, :n] == blank] = 0
            ids_rows.append([empty_id])
            first_rows.append(np.zeros(n, dtype=np.int64))
            size_rows.append(size)
            continue
        cf = char_frames[r]
        anchor = cf[_anchor_chars(offsets, len(cf))]
        anchor = np.maximum.accumulate(anchor)  # (n_tok,) frames, non-decreasing
        group_tok = np.flatnonzero(np.concatenate(([True], anchor[1:] != anchor[:-1])))  # (G,)
        group_frame = anchor[group_tok].copy()
        group_frame[0] = 0  # leading blanks belong to the first group
        group_size = np.diff(np.concatenate((group_tok, [len(ids)])))
        g = np.searchsorted(group_frame, np.arange(n), side="right") - 1  # (n,) group of each frame
        first, size = group_tok[g], group_size[g]
        if mode == "remove_blank":
            size = np.where(lab[r, :n] == blank, 0, size)
        ids_rows.append(list(ids))
        first_rows.append(first)
        size_rows.append(size)

    k = max(1, max(int(s.max()) for s in size_rows))
    s_max = max(len(i) for i in ids_rows)
    slot = np.full((b, t, k), -1, dtype=np.int64)
    token_ids = np.zeros((b, s_max), dtype=np.int64)
    j = np.arange(k)
    for r in range(b):
        n = lens[r]
        slot[r, :n] = np.where(j[None, :] < size_rows[r][:, None], first_rows[r][:, None] + j, -1)
        token_ids[r, :len(ids_rows[r])] = ids_rows[r]
    new_lengths = torch.tensor([len(i) for i in ids_rows], dtype=torch.long, device=lengths.device)
    return (torch.from_numpy(slot).to(labels.device), new_lengths,
            torch.from_numpy(token_ids).to(labels.device))


def span_compress(hidden: torch.Tensor, slot: torch.Tensor,
                  new_lengths: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, C), slot (B, T, K) (or (B, T)) from ``token_spans`` -> (B, S, C): the mean of
    each span's frames, S = new_lengths.max(), rows zero-padded. Vectorised (index_add, summed in
    float32, returned in hidden's dtype) and differentiable w.r.t. ``hidden``."""
    if slot.dim() == 2:
        slot = slot.unsqueeze(-1)
    b, t, c = hidden.shape
    if slot.shape[:2] != (b, t):
        raise ValueError(f"span_compress: slot {tuple(slot.shape)} does not match hidden "
                         f"{tuple(hidden.shape)}")
    s = int(new_lengths.max())
    bi, ti, ki = (slot >= 0).nonzero(as_tuple=True)  # (N,) each (frame, span) membership
    flat = bi * s + slot[bi, ti, ki]
    h = hidden.float()
    sums = h.new_zeros(b * s, c).index_add(0, flat, h[bi, ti])  # (B*S, C)
    counts = h.new_zeros(b * s).index_add(0, flat, h.new_ones(flat.shape[0]))
    return (sums / counts.clamp(min=1)[:, None]).view(b, s, c).to(hidden.dtype)


def token_compress(hidden: torch.Tensor, logits: torch.Tensor, lengths: torch.Tensor,
                   ctc_tokenizer, llm_tokenizer, mode: str = "average", blank: int = 0,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``token_spans(logits.argmax(-1), ...)`` then ``span_compress``: hidden (B, T, C), logits
    (B, T, V), lengths (B,) -> (compressed (B, S, C), new_lengths (B,), token_ids (B, S))."""
    slot, new_lengths, token_ids = token_spans(logits.argmax(-1), lengths, ctc_tokenizer,
                                               llm_tokenizer, mode, blank)
    return span_compress(hidden, slot, new_lengths), new_lengths, token_ids
