"""Long audio -> segments cut at pauses, found from the CTC compressor's blank runs.

The compressor labels every frame (40 ms for the paper's conv front end, 20 or 40 ms on Whisper); its greedy label is the blank (id 0) in silence and
between spoken labels, so a long run of blanks is a pause. A label that spells only a word
boundary (the sentencepiece "▁" of character labels) counts as a pause too: it needs no sound, and
a compressor may repeat it through a silence (the tiny test models do). The compressor was
trained on clips of at most ``data.max_seconds`` (20 s), so a long wave is labelled in
overlapping windows of that length.
A segment never exceeds ``max_segment_s``: while the rest of the file is longer, the next cut goes
in the middle of the longest pause inside the allowed range (at least MIN_SEGMENT_S from either
end); only where that range has no pause frame at all is the cut a hard one at the bound.
docs/design.md, "Long audio: segments cut at pauses".

Shape legend: T feature frames (the compressor backbone's: fbank 10 ms, Whisper 20 ms), F compressor
frames (``compressor.frame_samples``), W windows, V CTC labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..audio import SAMPLE_RATE
from ..errors import UsageError
from ..text import BLANK

MARGIN_S = 1.0  # seconds of context a window sees on each side of the labels it keeps
MIN_SEGMENT_S = 1.0  # no pause cut leaves a segment shorter than this (a whole file may be)


@dataclass(frozen=True)
class Span:
    """One segment of a wave, in samples."""

    start: int  # first sample
    end: int  # one past the last sample
    silent: bool = False  # every greedy CTC label in it is a pause label (nothing to decode)


def pause_runs(pause: torch.Tensor) -> torch.Tensor:
    """Pause frames (F,) bool -> (R, 2) [start, end) frames of each maximal run of them."""
    is_pause = pause.to(torch.int8)
    zero = is_pause.new_zeros(1)
    edges = torch.diff(is_pause, prepend=zero, append=zero)  # (F + 1,): +1 run starts, -1 ends
    starts = (edges == 1).nonzero().squeeze(1)
    ends = (edges == -1).nonzero().squeeze(1)
    return torch.stack([starts, ends], dim=1)


def _best_cut(runs: torch.Tensor, lo: int, hi: int) -> int | None:
    """The middle of the pause with the most frames in [lo, hi] (the later one on a tie), moved
    into [lo, hi] (a long silence is cut as late as the bound allows); None when no pause frame
    lies in that range."""
    length = runs[:, 1].clamp(lo, hi) - runs[:, 0].clamp(lo, hi)  # (R,) frames inside [lo, hi]
    if length.numel() == 0 or int(length.max()) <= 0:
        return None
    best = length.numel() - 1 - int(length.flip(0).argmax())  # the last of the longest
    return min(max(int(runs[best].sum()) // 2, lo), hi)


def cut_frames(pause: torch.Tensor, max_frames: int, min_frames: int) -> list[tuple[int, int]]:
    """Pause frames (F,) bool -> [start, end) frame ranges covering 0..F in order, each at most
    ``max_frames`` long, cut in pauses (module docstring)."""
    n, runs = pause.shape[0], pause_runs(pause)
    min_frames = max(1, min(min_frames, max_frames // 2))
    spans, start = [], 0
    while n - start > max_frames:
        lo, hi = start + min_frames, min(start + max_frames, n - min_frames)
        cut = _best_cut(runs, lo, hi)
        cut = hi if cut is None else cut  # no pause at all: a hard cut at the bound
        spans.append((start, cut))
        start = cut
    spans.append((start, n))
    return spans


@torch.no_grad()
def compressor_log_probs(compressor, feats: torch.Tensor) -> torch.Tensor:
    """CMVN-normalised feats (T, D) -> the compressor's CTC log-probs (F, V), float32."""
    lengths = torch.tensor([feats.shape[0]], device=feats.device)
    _, logits, frames = compressor(feats[None], lengths)  # (1, F, V)
    return logits[0, : int(frames[0])].float().log_softmax(-1)


@torch.no_grad()
def greedy_labels(compressor, feats: torch.Tensor, window: int,
                  batch_frames: int = 16000) -> torch.Tensor:
    """CMVN-normalised feats (T, D) -> greedy CTC labels (F,) on the CPU, labelled in windows of
    ``window`` feature frames (a multiple of the compressor's stride) that overlap by 2 margins of
    MARGIN_S; each frame's label comes from the window where it has at least a margin of context
    (the file's ends excepted)."""
    per, margin = compressor.stride, margin_frames(compressor)
    t, step = feats.shape[0], window - 2 * margin
    total = int(compressor.backbone.out_lengths(torch.tensor(t)))
    starts = [0]
    while starts[-1] + window < t:
        starts.append(starts[-1] + step)
    # window i keeps global frames [keep[i], keep[i + 1]); its local frame k is global a_i / per + k
    keep = [0] + [(a + margin) // per for a in starts[1:]] + [total]
    labels = torch.zeros(total, dtype=torch.long)
    per_batch = max(1, batch_frames // window)
    for b in range(0, len(starts), per_batch):
        chunk = starts[b : b + per_batch]
        x = feats.new_zeros(len(chunk), window, feats.shape[1])  # (W, window, D) zero-padded
        lengths = torch.tensor([min(window, t - a) for a in chunk], device=feats.device)
        for i, a in enumerate(chunk):
            x[i, : int(lengths[i])] = feats[a : a + window]
        _, logits, _ = compressor(x, lengths)  # (W, window / per, V)
        best = logits.argmax(-1).cpu()  # (W, window / per)
        for i, a in enumerate(chunk):
            lo, hi = keep[b + i], keep[b + i + 1]
            labels[lo:hi] = best[i, lo - a // per : hi - a // per]
    return labels


def margin_frames(compressor) -> int:
    """MARGIN_S in the compressor's feature frames, a multiple of its stride."""
    per = compressor.stride
    return per * int(round(MARGIN_S * compressor.feature_rate / per))


@lru_cache(maxsize=8)
def pause_labels(ctc_tokenizer) -> tuple[int, ...]:
    """The blank and the labels that spell only a word boundary (decode to whitespace)."""
    if ctc_tokenizer is None:
        return (BLANK,)
    return (BLANK, *(i for i in range(2, ctc_tokenizer.vocab_size)
                     if not ctc_tokenizer.decode([i]).strip()))


def segment_wave(wave: np.ndarray, compressor, cmvn, max_segment_s: float, window_s: float,
                 pauses: Sequence[int] = (BLANK,), frame_samples: int | None = None) -> list[Span]:
    """A 16 kHz wave (N,) -> its segments in order, covering it without overlap, each at most
    ``max_segment_s`` long. ``window_s``: the longest clip the compressor was trained on;
    ``pauses``: the labels that mark a pause (:func:`pause_labels`). A wave no longer than
    ``max_segment_s`` is one segment (the compressor does not run); ``compressor`` None (a model
    without one): hard cuts every ``max_segment_s`` (frames of ``frame_samples``, its backbone's)."""
    n = wave.shape[0]
    samples = compressor.frame_samples if compressor is not None else frame_samples
    if samples is None:
        raise TypeError("segment_wave without a compressor needs frame_samples (the model's backbone's)")
    frame_s = samples / SAMPLE_RATE
    max_frames = int(round(max_segment_s / frame_s, 6))
    if not max_segment_s >= 2 * MIN_SEGMENT_S:
        raise UsageError(f"max_segment_s must be at least {2 * MIN_SEGMENT_S:g} s, "
                         f"got {max_segment_s}")
    if compressor is not None:  # feature frames, a multiple of the stride
        per, margin = compressor.stride, margin_frames(compressor)
        window = per * (int(round(window_s * compressor.feature_rate, 6)) // per)
        if window <= 2 * margin + per:
            raise UsageError(f"data.max_seconds={window_s}: too short a window to label long "
                             f"audio in (at least {(2 * margin + 2 * per) / compressor.feature_rate:g} s)")
    if n <= max_frames * samples:
        return [Span(0, n)]
    covered = -(-n // samples)  # frames that cover every sample
    pause = torch.zeros(covered, dtype=torch.bool)  # no compressor: no pause known
    if compressor is not None:
        feats = cmvn(compressor.features([wave])[0].to(next(compressor.parameters()).device))  # (T, D)
        labels = greedy_labels(compressor, feats, window)[:covered]  # (F,), F <= covered
        pause[: labels.shape[0]] = torch.isin(labels, torch.tensor(list(pauses)))
        pause[labels.shape[0] :] = True  # the last frames without a label: taken as a pause
    min_frames = int(MIN_SEGMENT_S / frame_s)
    return [Span(a * samples, min(b * samples, n),
                 compressor is not None and bool(pause[a:b].all()))
            for a, b in cut_frames(pause, max_frames, min_frames)]


def seconds(sample: int) -> float:
    """A sample index at 16 kHz in seconds, rounded to the millisecond."""
    return round(sample / SAMPLE_RATE, 3)
