"""Audio loading, validation and Kaldi-compatible log-mel filterbank features.

Pipeline position: file -> ``load_audio`` -> ``fbank`` -> ``CMVN`` -> (training only) ``spec_augment``
-> CTC compressor.  Everything is pure numpy / torch (no torchaudio); resampling uses soxr.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from ..errors import UserError

# hard-coded audio hyperparameters (Kaldi compute-fbank-feats defaults, 80 bins)
SAMPLE_RATE = 16000  # Hz; every feature is computed at this rate

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


# ---------------------------------------------------------------------------------------------------
# normalisation and augmentation
# ---------------------------------------------------------------------------------------------------


