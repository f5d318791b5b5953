"""Waveform augmentation for training rows: speed, additive noise, telephone band, gain.

Pipeline position (training only, a share ``augment.prob`` of the rows):
``load_audio`` -> ``Augmenter`` -> ``fbank`` -> CMVN -> SpecAugment; the other rows and every
evaluation and inference path read the clean features. All waves here are 1-D float32 at
SAMPLE_RATE (16 kHz) in [-1, 1]; pure numpy + soxr. All randomness comes from the generator passed
in, so the same generator state gives the same wave (exact resume). See docs/design.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import soxr
import torch

from ..config import AugmentConfig
from ..errors import UsageError
from . import HOP_LENGTH, SAMPLE_RATE, WIN_LENGTH, load_audio, num_frames

TELEPHONE_RATE = 8000  # Hz, narrowband telephony (G.711)
TELEPHONE_BAND = (300.0, 3400.0)  # Hz, the passband of a telephone channel
MU = 255  # mu-law constant of 8-bit G.711


def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play ``wave`` ``factor`` times faster (tempo and pitch), as Kaldi/ESPnet speed perturbation:
    read it as if sampled at sample_rate * factor and resample to sample_rate.
    (n,) -> (round(n / factor),)."""
    if factor == 1.0:
        return wave
    out = soxr.resample(wave, sample_rate * factor, sample_rate, quality="HQ")
    return out.astype(np.float32, copy=False)


def frame_range(n_frames: int, factor: float) -> tuple[int, int]:
    """Fewest and most fbank frames a recording of ``n_frames`` frames can have after
    ``speed_perturb(factor)``. The cache knows frames, not samples: the recording has
    (n_frames - 1) * HOP + WIN samples plus up to HOP - 1 more; soxr rounds n / factor."""
    if factor == 1.0:
        return n_frames, n_frames
    fewest = (n_frames - 1) * HOP_LENGTH + WIN_LENGTH
    most = fewest + HOP_LENGTH - 1
    return num_frames(math.floor(fewest / factor) - 1), num_frames(math.ceil(most / factor) + 1)


def fast_fft_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: numpy's FFT of a length with a large prime factor is ~40x slower
    (20 ms vs 0.5 ms for 3 s of audio)."""
    best, p5 = 2 * n, 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best, p35 = min(best, p), p35 * 3
        p5 *= 5
    return best


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) standard normal samples (flat spectrum)."""
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) 1/f noise: white noise whose FFT amplitudes are scaled by 1/sqrt(f) (power ~ 1/f),
    the DC bin zeroed; made at a fast FFT length and cropped to n."""
    m = fast_fft_length(n)
    spectrum = np.fft.rfft(rng.standard_normal(m))  # (m // 2 + 1,)
    freqs = np.arange(spectrum.size, dtype=np.float64)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n=m)[:n].astype(np.float32)


def add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """wave + noise scaled so that 10 log10(power(wave) / power(scaled noise)) = snr_db exactly.
    wave, noise: (n,). Not clipped (``Augmenter`` clips once, at the end)."""
    signal_power = float(np.mean(np.square(wave, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if noise_power == 0.0:
        return wave
    scale = math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave + scale * noise).astype(np.float32)


def _mu_law(wave: np.ndarray) -> np.ndarray:
    """8-bit mu-law companding and back (G.711's quantisation noise), (n,) -> (n,)."""
    x = np.clip(wave, -1.0, 1.0)
    y = np.sign(x) * np.log1p(MU * np.abs(x)) / math.log1p(MU)  # in [-1, 1]
    y = np.round((y + 1.0) * 127.5) / 127.5 - 1.0  # 256 levels
    return (np.sign(y) * np.expm1(np.abs(y) * math.log1p(MU)) / MU).astype(np.float32)


def telephone(wave: np.ndarray, mu_law: bool = True) -> np.ndarray:
    """A narrowband telephone channel: 16 kHz -> 8 kHz (optionally mu-law coded) -> 16 kHz, then
    band-passed to 300-3400 Hz with an rfft mask over the whole wave, zero-padded to a fast FFT
    length (cropping back to n leaves ~-35 dB of the energy outside the band). (n,) -> (n,)."""
    n = wave.size
    narrow = soxr.resample(wave, SAMPLE_RATE, TELEPHONE_RATE, quality="HQ")
    if mu_law:
        narrow = _mu_law(narrow)
    wide = soxr.resample(narrow, TELEPHONE_RATE, SAMPLE_RATE, quality="HQ")[:n]  # odd n gains one
    wide = np.pad(wide, (0, n - wide.size))
    m = fast_fft_length(n)
    spectrum = np.fft.rfft(wide, n=m)  # (m // 2 + 1,)
    freqs = np.fft.rfftfreq(m, 1.0 / SAMPLE_RATE)
    spectrum[(freqs < TELEPHONE_BAND[0]) | (freqs > TELEPHONE_BAND[1])] = 0.0
    return np.fft.irfft(spectrum, n=m)[:n].astype(np.float32)


def apply_gain(wave: np.ndarray, gain_db: float) -> np.ndarray:
    """wave * 10^(gain_db / 20), not clipped. (n,) -> (n,)."""
    return (wave * 10.0 ** (gain_db / 20.0)).astype(np.float32)


def numpy_rng(rng: torch.Generator | np.random.Generator) -> np.random.Generator:
    """A numpy generator: ``rng`` itself, or one seeded by a single draw from a torch generator
    (whose state the training tasks checkpoint)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=rng)))


class Augmenter:
    """Random waveform augmentation of one training row, configured by ``AugmentConfig``.

    Per call: a speed from ``speeds`` (the row's feasible ones, see ``speeds_for``), then with
    ``noise_prob`` white, pink or babble noise (another recording of ``babble_paths``) at an SNR
    uniform in [snr_min, snr_max] dB, then with ``telephone_prob`` the telephone channel, then a
    gain uniform in [-gain_db, +gain_db] dB; the result is clipped to [-1, 1].
    Which rows are augmented at all (``prob``) is the caller's draw.
    """

    def __init__(self, cfg: AugmentConfig, babble_paths: Sequence[str] = ()):
        if cfg.noise_prob > 0 and "babble" in cfg.noise_kinds and not babble_paths:
            raise UsageError("babble noise needs recordings to mix in (babble_paths)")
        self.cfg, self.babble_paths = cfg, list(babble_paths)

    def speeds_for(self, n_frames: int, max_frames: int, min_frames: int = 0) -> list[float]:
        """The speeds that keep a row of ``n_frames`` cached frames within [min_frames, max_frames]
        frames (a CTC target's minimum, the batch cap); [1.0] when none does."""
        fits = []
        for s in self.cfg.speeds:
            fewest, most = frame_range(n_frames, s)
            if fewest >= min_frames and most <= max_frames:
                fits.append(s)
        return fits or [1.0]

    @staticmethod
    def longest(n_frames: int, speeds: Sequence[float]) -> int:
        """Most frames the row can have at any of ``speeds`` (its length for the batch sampler)."""
        return max(frame_range(n_frames, s)[1] for s in speeds)

    def __call__(self, wave: np.ndarray, rng: torch.Generator | np.random.Generator,
                 speeds: Sequence[float] | None = None) -> np.ndarray:
        """(n,) float32 at 16 kHz -> (round(n / speed),) float32 in [-1, 1]. ``speeds``: the row's
        feasible speeds (default: all of ``cfg.speeds``)."""
        c, g = self.cfg, numpy_rng(rng)
        options = c.speeds if speeds is None else speeds
        wave = speed_perturb(wave, float(options[g.integers(len(options))]))
        if g.random() < c.noise_prob:
            wave = add_noise(wave, self._noise(wave.size, g), g.uniform(c.snr_min, c.snr_max))
        if g.random() < c.telephone_prob:
            wave = telephone(wave, c.telephone_mu_law)
        if c.gain_db > 0:
            wave = apply_gain(wave, g.uniform(-c.gain_db, c.gain_db))
        return np.clip(wave, -1.0, 1.0)

    def _noise(self, n: int, g: np.random.Generator) -> np.ndarray:
        """(n,) noise of a kind drawn from ``cfg.noise_kinds``; babble is a random stretch of a
        random recording (tiled when shorter than n)."""
        kind = self.cfg.noise_kinds[g.integers(len(self.cfg.noise_kinds))]
        if kind == "white":
            return white_noise(n, g)
        if kind == "pink":
            return pink_noise(n, g)
        babble = load_audio(self.babble_paths[g.integers(len(self.babble_paths))])
        babble = np.tile(babble, -(-n // babble.size))  # (>= n,)
        start = int(g.integers(babble.size - n + 1))
        return babble[start : start + n]
