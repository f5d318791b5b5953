"""Audio in: files decoded, resampled and checked (``io``), the log-mel filterbank, CMVN and
SpecAugment (``features``), and waveform augmentation for training (``augment``)."""

from .features import CMVN, HOP_LENGTH, N_FFT, N_MELS, WIN_LENGTH, fbank, mel_filters, num_frames, spec_augment
from .io import MIN_SECONDS, SAMPLE_RATE, SILENCE_PEAK, AudioError, load_audio, load_audio_bytes, validate_wave

__all__ = ["AudioError", "CMVN", "HOP_LENGTH", "MIN_SECONDS", "N_FFT", "N_MELS", "SAMPLE_RATE", "SILENCE_PEAK",
           "WIN_LENGTH", "fbank", "load_audio", "load_audio_bytes", "mel_filters", "num_frames",
           "spec_augment", "validate_wave"]
