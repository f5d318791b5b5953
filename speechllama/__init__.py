"""speechllama: a decoder-only text LLM that listens (Speech-LLaMA, arXiv 2307.03917).

Public API::

    wave = speechllama.load_audio("clip.ogg")          # (N,) float32, 16 kHz mono
    feats = speechllama.fbank(wave)                     # (T, 80) log-mel, 25 ms / 10 ms
    out, lengths = speechllama.ctc_compress(hidden, logits, lengths, "average")
"""

from .audio import AudioError, fbank, load_audio
from .models.ctc_compressor import ctc_compress

__all__ = ["AudioError", "ctc_compress", "fbank", "load", "load_audio"]
__version__ = "0.1.0"


def load(path, *args, **kwargs):
    """Load a trained Speech-LLaMA model: ``speechllama.load("runs/demo/model")``."""
    from .inference.api import load as _load

    return _load(path, *args, **kwargs)
