"""Word timestamps: CTC forced alignment of a transcript's labels to the compressor's log-probs.

Written by hand: ``torchaudio.functional.forced_align`` does the same Viterbi, but torchaudio does
not import here (no build for this torch). Shape legend: T compressor frames (40 ms), V CTC
labels, L transcript labels, S = 2L + 1 CTC states (blank, l1, blank, l2, ..., blank).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..text import BLANK, UNK


def forced_align(log_probs: torch.Tensor, labels: Sequence[int], blank: int = BLANK,
                 ) -> np.ndarray | None:
    """log_probs (T, V), labels (L,) -> (L, 2) int array: the first and last frame of each label on
    the most likely CTC path that spells ``labels``; None when no path fits in T frames.

    Viterbi: the recursion is sequential in time and vectorised over the S states."""
    t_len, n = log_probs.shape[0], len(labels)
    if n == 0 or t_len == 0:
        return np.zeros((0, 2), dtype=np.int64) if n == 0 else None
    device = log_probs.device
    ext = torch.full((2 * n + 1,), blank, dtype=torch.long, device=device)
    ext[1::2] = torch.as_tensor(list(labels), dtype=torch.long, device=device)  # (S,)
    emit = log_probs.float()[:, ext]  # (T, S)
    can_skip = torch.zeros_like(ext, dtype=torch.bool)  # entered from s - 2, over a blank:
    can_skip[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])  # a label, unless it repeats
    neg = torch.tensor(float("-inf"), device=device)
    alpha = torch.full_like(emit[0], float("-inf"))  # (S,)
    alpha[:2] = emit[0, :2]
    back = torch.zeros(t_len, ext.shape[0], dtype=torch.int8, device=device)  # (T, S) steps back
    for t in range(1, t_len):
        one = torch.cat([neg[None], alpha[:-1]])
        two = torch.where(can_skip, torch.cat([neg.expand(2), alpha[:-2]]), neg)
        best, step = torch.stack([alpha, one, two]).max(0)  # (3, S) -> (S,)
        alpha = best + emit[t]
        back[t] = step.to(torch.int8)
    last = 2 * n - 1 + int(alpha[-1] > alpha[-2])  # end on the last label or the blank after it
    if not torch.isfinite(alpha[last]):
        return None
    return _label_frames(back.cpu().numpy(), last, n)


def _label_frames(back: np.ndarray, last: int, n: int) -> np.ndarray:
    """Back-pointers (T, S) and the final state -> (L, 2) first/last frame of every label."""
    states = np.empty(back.shape[0], dtype=np.int64)
    s = last
    for t in range(back.shape[0] - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    frames = np.arange(back.shape[0])
    on_label = states % 2 == 1
    label = (states[on_label] - 1) // 2
    spans = np.empty((n, 2), dtype=np.int64)
    spans[:, 0], spans[:, 1] = back.shape[0], -1
    np.minimum.at(spans[:, 0], label, frames[on_label])
    np.maximum.at(spans[:, 1], label, frames[on_label])
    return spans


def word_frames(ctc_tokenizer, text: str, log_probs: torch.Tensor,
                ) -> list[tuple[str, int, int]] | None:
    """The words of ``text`` (split at whitespace) with their [start, end) frames in
    ``log_probs`` (T, V). Each word is encoded with the CTC labels on its own (what the compressor
    was trained on: a transcript's labels are its words' labels in order); word-boundary labels
    (a sentencepiece "▁") do not count towards a word's time. A token with no label (punctuation
    only) gets no entry. None when a word needs the unknown label (the labels cannot spell it) or
    no CTC path fits."""
    words, labels, owner, timed = [], [], [], []
    for token in text.split():
        ids = ctc_tokenizer.encode(token)
        if not ids:
            continue
        if UNK in ids:
            return None
        spoken = [bool(ctc_tokenizer.decode([i]).strip()) for i in ids]
        timed += spoken if any(spoken) else [True] * len(ids)
        owner += [len(words)] * len(ids)
        labels += ids
        words.append(token)
    spans = forced_align(log_probs, labels)
    if spans is None:
        return None
    owner_a, timed_a = np.asarray(owner, dtype=np.int64), np.asarray(timed, dtype=bool)
    out = []
    for k, word in enumerate(words):
        mine = spans[(owner_a == k) & timed_a]  # (labels of word k, 2)
        out.append((word, int(mine[:, 0].min()), int(mine[:, 1].max()) + 1))
    return out
