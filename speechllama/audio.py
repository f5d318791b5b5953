"""Audio loading, validation and Kaldi-compatible log-mel filterbank features.

Pipeline position: file -> ``load_audio`` -> ``fbank`` -> ``CMVN`` -> (training only) ``spec_augment``
-> CTC compressor.  Everything is pure numpy / torch (no torchaudio); resampling uses soxr.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import struct
from typing import BinaryIO, Iterable

import numpy as np
import soundfile as sf
import soxr
import torch

from .errors import UsageError
from .errors import UserError

# hard-coded audio hyperparameters (Kaldi compute-fbank-feats defaults, 80 bins)
SAMPLE_RATE = 16000  # Hz; every feature is computed at this rate
N_MELS = 80  # mel filterbank channels
WIN_LENGTH = 400  # samples per frame: 25 ms at 16 kHz
HOP_LENGTH = 160  # samples between frames: 10 ms at 16 kHz
N_FFT = 512  # FFT size: next power of two >= WIN_LENGTH (Kaldi round_to_power_of_two)
PREEMPHASIS = 0.97  # Kaldi preemph_coeff
LOW_FREQ = 20.0  # Hz, lower edge of the first mel bin; the upper edge of the last one is Nyquist
INT16_SCALE = 32768.0  # waves in [-1, 1] are scaled to int16 range before the FFT, as Kaldi does
LOG_FLOOR = torch.finfo(torch.float32).eps  # log(max(energy, eps)), Kaldi's floor for log-mel energies

# audio validation
MIN_SECONDS = 0.1  # shorter clips are rejected: 0.1 s = 8 fbank frames, too few to hold a spoken word
SILENCE_PEAK = 1e-4  # peak |x| below this (~ -80 dBFS, ~3 int16 steps) is digital silence / dither only


class AudioError(UserError, ValueError):
    """Raised for unusable audio; the message always starts with the file (or given) name."""


# ---------------------------------------------------------------------------------------------------
# loading and validation
# ---------------------------------------------------------------------------------------------------


def _as_float32(wave: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1]; floats are cast to float32 unchanged."""
    wave = np.asarray(wave)
    if np.issubdtype(wave.dtype, np.integer):
        return (wave / float(np.iinfo(wave.dtype).max + 1)).astype(np.float32)
    if not np.issubdtype(wave.dtype, np.floating):
        raise TypeError(f"unsupported sample dtype {wave.dtype}")
    return wave.astype(np.float32, copy=False)


def validate_wave(wave: np.ndarray, sample_rate: int, name: str = "<array>") -> np.ndarray:
    """Check in-memory audio and return it as mono float32.

    wave: (n_samples,) or (n_samples, n_channels), float in [-1, 1] (integer PCM is scaled to that range).
    sample_rate: Hz, of ``wave``.  Not resampled here.
    Returns a 1-D float32 array (the mean of the channels).  Raises AudioError, message prefixed by ``name``.
    """
    if sample_rate is None or sample_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {sample_rate!r} (must be > 0 Hz)")
    try:
        wave = _as_float32(wave)
    except TypeError as e:
        raise AudioError(f"{name}: {e}") from e
    if wave.ndim == 2:
        if wave.shape[1] == 0:
            raise AudioError(f"{name}: audio has 0 channels")
        wave = wave.mean(axis=1, dtype=np.float32)
    elif wave.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D or (samples, channels) array, got shape {wave.shape}")
    if wave.size == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise AudioError(f"{name}: {bad} NaN or infinite samples")
    seconds = wave.size / sample_rate
    if seconds < MIN_SECONDS:
        raise AudioError(f"{name}: too short ({seconds:.3f} s, minimum {MIN_SECONDS} s)")
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name}: silent audio (peak amplitude {peak:.2e} < {SILENCE_PEAK:.0e})")
    return np.ascontiguousarray(wave)


def _wav_declared_bytes(source: str | BinaryIO) -> tuple[int, int] | None:
    """(declared data-chunk size, bytes actually present after the chunk header) of a RIFF/WAVE file
    (a path or a seekable binary file object).

    libsndfile silently shortens a WAV whose data chunk runs past the end of the file, so truncation
    has to be read from the header.  Returns None for non-RIFF files and for the streaming
    placeholders 0 / 0xFFFFFFFF that some writers leave when the length was unknown.
    """
    with open(source, "rb") if isinstance(source, str) else contextlib.nullcontext(source) as f:
        file_size = f.seek(0, os.SEEK_END)
        f.seek(0)
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                if size in (0, 0xFFFFFFFF):
                    return None
                return size, file_size - f.tell()
            f.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to an even length


def _read_file(source: str | BinaryIO, path: str) -> tuple[np.ndarray, int]:
    """Decode ``source`` (a path, or a binary file object named ``path`` in messages) with libsndfile
    -> ((n_samples, n_channels) float32, sample rate)."""
    try:
        with sf.SoundFile(source) as f:
            expected, rate = f.frames, f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    # SoundFileError: on open (not audio) or mid-read (corrupt / truncated data);
    # TypeError: headerless formats (e.g. *.raw) that would need the rate and sample type passed in
    except (sf.SoundFileError, TypeError) as e:
        reason = getattr(e, "error_string", str(e)).strip()
        raise AudioError(f"{path}: cannot decode audio ({reason}); not audio, or corrupt/truncated") from e
    if expected == 0:  # also how libsndfile reports an ogg cut before its last page (no end granule)
        raise AudioError(f"{path}: no audio (0 samples): empty stream, or truncated before its end")
    if len(data) < expected:
        raise AudioError(f"{path}: truncated file (header promises {expected} frames, read {len(data)})")
    declared = _wav_declared_bytes(source)
    if declared is not None and declared[0] > declared[1]:
        raise AudioError(
            f"{path}: truncated file (WAV data chunk declares {declared[0]} bytes, {declared[1]} present)"
        )
    return data, rate


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any file libsndfile decodes (wav, flac, ogg, mp3, ...), any rate and channel count.

    Returns mono (mean of channels) float32 samples in [-1, 1] at ``sample_rate`` Hz, shape (n_samples,),
    resampled with soxr (HQ) when needed.  Raises AudioError (message starts with the path) for a
    missing, empty, undecodable, truncated, too short, non-finite or silent file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: file not found")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    return _mono_at_rate(*_read_file(path, path), path, sample_rate)


def load_audio_bytes(data: bytes, name: str = "<bytes>", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``load_audio`` of an in-memory file (an upload): the same formats, checks and result, decoded
    from memory (no temporary file); messages start with ``name``."""
    if not data:
        raise AudioError(f"{name}: empty file (0 bytes)")
    return _mono_at_rate(*_read_file(io.BytesIO(data), name), name, sample_rate)


def _mono_at_rate(data: np.ndarray, rate: int, name: str, sample_rate: int) -> np.ndarray:
    wave = validate_wave(data, rate, name=name)
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return wave


# ---------------------------------------------------------------------------------------------------
# filterbank features
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# normalisation and augmentation
# ---------------------------------------------------------------------------------------------------


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
