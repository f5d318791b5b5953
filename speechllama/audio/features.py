"""Kaldi-compatible log-mel filterbank (80 bins, 25 ms / 10 ms), CMVN and SpecAugment."""

from __future__ import annotations

import functools
import math
from typing import Iterable

import numpy as np
import soxr
import torch

from ..errors import UsageError
from .io import SAMPLE_RATE

N_MELS = 80  # mel filterbank channels


WIN_LENGTH = 400  # samples per frame: 25 ms at 16 kHz


HOP_LENGTH = 160  # samples between frames: 10 ms at 16 kHz


N_FFT = 512  # FFT size: next power of two >= WIN_LENGTH (Kaldi round_to_power_of_two)


PREEMPHASIS = 0.97  # Kaldi preemph_coeff


LOW_FREQ = 20.0  # Hz, lower edge of the first mel bin; the upper edge of the last one is Nyquist


INT16_SCALE = 32768.0  # waves in [-1, 1] are scaled to int16 range before the FFT, as Kaldi does


LOG_FLOOR = torch.finfo(torch.float32).eps  # log(max(energy, eps)), Kaldi's floor for log-mel energies


def num_frames(num_samples: int) -> int:
    """Number of frames ``fbank`` returns for ``num_samples`` samples at 16 kHz (snip_edges=True)."""
    if num_samples < WIN_LENGTH:
        return 0
    return 1 + (num_samples - WIN_LENGTH) // HOP_LENGTH


def _mel(freq: torch.Tensor) -> torch.Tensor:
    """Kaldi mel scale: 1127 * ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(freq / 700.0)


@functools.lru_cache(maxsize=None)
def mel_filters(n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> torch.Tensor:
    """Kaldi triangular mel filterbank, shape (n_fft // 2 + 1, n_mels), float32 on CPU.

    Triangles are linear in mel, equally spaced from LOW_FREQ to Nyquist; the Nyquist FFT bin always
    gets weight 0 (Kaldi only uses the first n_fft // 2 bins).  Cached: treat the result as read-only.
    """
    mel_low, mel_high = _mel(torch.tensor([LOW_FREQ, sample_rate / 2], dtype=torch.float64))
    edges = torch.linspace(mel_low, mel_high, n_mels + 2, dtype=torch.float64)  # (n_mels + 2,)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1)
    bin_mel = _mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft))  # (n_fft // 2,)
    up, down = (bin_mel - left) / (center - left), (right - bin_mel) / (right - center)
    weights = torch.clamp(torch.minimum(up, down), min=0.0)  # zero outside (left, right)
    weights = torch.cat([weights, weights.new_zeros(n_mels, 1)], dim=1)  # Nyquist bin
    return weights.T.contiguous().float()


@functools.lru_cache(maxsize=None)
def _povey_window(length: int = WIN_LENGTH) -> torch.Tensor:
    """Kaldi's "povey" window: a Hann window raised to the power 0.85, shape (length,)."""
    n = torch.arange(length, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * n / (length - 1))).pow(0.85).float()


def fbank(wave: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Kaldi-compatible 80-dim log-mel filterbank (compute-fbank-feats defaults, dither=0).

    wave: (n_samples,), float in [-1, 1], at ``sample_rate`` Hz (resampled to 16 kHz with soxr if different).
    The wave is multiplied by 32768 (int16 scale) before framing, like Kaldi and
    torchaudio.compliance.kaldi; this equals kaldi-native-fbank fed ``wave * 32768``.
    Returns (num_frames(n), 80) float32 on the wave's device; (0, 80) when shorter than one 25 ms frame.
    """
    if sample_rate != SAMPLE_RATE:
        if sample_rate <= 0:
            raise UsageError(f"invalid sample rate {sample_rate!r}")
        device = wave.device if torch.is_tensor(wave) else torch.device("cpu")
        array = wave.detach().cpu().numpy() if torch.is_tensor(wave) else np.asarray(wave)
        array = soxr.resample(np.asarray(array, dtype=np.float32), sample_rate, SAMPLE_RATE, quality="HQ")
        wave = torch.from_numpy(array).to(device)
    wave = torch.as_tensor(wave).to(torch.float32)
    if wave.ndim != 1:
        raise ValueError(f"fbank expects a 1-D wave, got shape {tuple(wave.shape)}")
    if wave.numel() < WIN_LENGTH:
        return wave.new_zeros(0, N_MELS)

    frames = (wave * INT16_SCALE).unfold(0, WIN_LENGTH, HOP_LENGTH)  # (T, 400)
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC offset
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[-1] := x[0], as in Kaldi
    frames = frames - PREEMPHASIS * previous
    frames = frames * _povey_window().to(wave.device)

    power = torch.fft.rfft(frames, n=N_FFT).abs().pow(2)  # (T, 257)
    mel = power @ mel_filters().to(wave.device)  # (T, 80)
    return torch.clamp(mel, min=LOG_FLOOR).log()


class CMVN:
    """Global cepstral mean and variance normalisation, estimated once on the training set.

    Stored with the model (``state_dict``) so inference uses exactly the training statistics.
    """

    STD_FLOOR = 1e-5  # guards against constant dimensions (std 0) blowing up the division

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.ndim != 1 or mean.shape != std.shape:
            shapes = f"{tuple(mean.shape)} and {tuple(std.shape)}"
            raise ValueError(f"mean and std must be equal-length vectors, got {shapes}")
        self.mean, self.std = mean.clone(), std.clamp(min=self.STD_FLOOR)

    @classmethod
    def from_features(cls, feats_iterable: Iterable[torch.Tensor]) -> CMVN:
        """Accumulate per-dim sum and sum of squares (float64) over every frame of (T, F) feature matrices."""
        total, total_sq, count = None, None, 0
        for feats in feats_iterable:
            feats = torch.as_tensor(feats).detach().to("cpu", torch.float64)
            feats = feats.reshape(-1, feats.shape[-1])
            if total is None:
                total, total_sq = feats.new_zeros(feats.shape[1]), feats.new_zeros(feats.shape[1])
            total += feats.sum(dim=0)
            total_sq += feats.square().sum(dim=0)
            count += feats.shape[0]
        if count == 0:
            raise ValueError("CMVN.from_features: no feature frames given")
        mean = total / count
        var = (total_sq / count - mean.square()).clamp(min=0.0)
        return cls(mean, var.sqrt())

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., F) -> (feats - mean) / std, same shape, dtype and device."""
        mean = self.mean.to(feats.device, feats.dtype)
        std = self.std.to(feats.device, feats.dtype)
        return (feats - mean) / std

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"mean": (F,), "std": (F,)} float32 copies."""
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor]) -> CMVN:
        return cls(d["mean"], d["std"])


def _random_spans(
    n_rows: int, n_spans: int, max_width: torch.Tensor, limit: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, ``n_spans`` random spans [start, start + width) with width in [0, max_width] and
    start + width <= limit.  max_width, limit: (n_rows,) int64.  Returns start, end: (n_rows, n_spans)."""
    u_width = torch.rand(n_rows, n_spans, generator=generator, dtype=torch.float64)
    u_start = torch.rand(n_rows, n_spans, generator=generator, dtype=torch.float64)
    width = torch.minimum((u_width * (max_width[:, None] + 1)).floor().long(), limit[:, None])
    start = (u_start * (limit[:, None] - width + 1)).floor().long()
    return start, start + width


def spec_augment(
    feats: torch.Tensor,
    lengths: torch.Tensor,
    *,
    freq_masks: int = 2,
    freq_width: int = 27,
    time_masks: int = 2,
    time_width_ratio: float = 0.05,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment frequency and time masking (no time warping), vectorised over the batch.

    feats: (B, T, F) CMVN-normalised features; lengths: (B,) valid frames per row.
    Each row gets ``freq_masks`` bands of width U{0..freq_width} bins and ``time_masks`` spans of
    width U{0..floor(time_width_ratio * length)} frames lying inside the row's valid length.
    Masked values become 0.0 (the post-CMVN mean).  Returns a new tensor; ``feats`` is untouched.
    Random numbers come from ``generator`` (CPU), so results are reproducible given its seed.
    """
    batch, n_time, n_freq = feats.shape
    lengths = lengths.to("cpu", torch.long).clamp(0, n_time)

    f_start, f_end = _random_spans(
        batch, freq_masks, torch.full((batch,), freq_width), torch.full((batch,), n_freq), generator
    )
    t_max = (lengths.double() * time_width_ratio).floor().long()
    t_start, t_end = _random_spans(batch, time_masks, t_max, lengths, generator)

    f_idx, t_idx = torch.arange(n_freq), torch.arange(n_time)
    f_mask = ((f_idx >= f_start[..., None]) & (f_idx < f_end[..., None])).any(dim=1)  # (B, F)
    t_mask = ((t_idx >= t_start[..., None]) & (t_idx < t_end[..., None])).any(dim=1)  # (B, T)
    valid = t_idx < lengths[:, None]  # (B, T); padding is never touched, not even by frequency masks
    mask = (f_mask[:, None, :] | t_mask[:, :, None]) & valid[:, :, None]  # (B, T, F)
    return feats.masked_fill(mask.to(feats.device), 0.0)
