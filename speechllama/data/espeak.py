"""espeak-ng, the corpus's formant synthesiser: its voices per language and one utterance spoken.

Kokoro-82M (``kokoro.py``) reads its phonemes from espeak-ng too, so both voice sources take it
from here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..audio import load_audio
from .manifest import CorpusError

ESPEAK = "espeak-ng"
ESPEAK_HINT = "install it with 'sudo apt-get install espeak-ng'"
ESPEAK_VOICES = {"de": "de", "fr": "fr-fr", "es": "es", "it": "it", "nl": "nl", "cs": "cs", "en": "en-us"}


def require_espeak() -> None:
    """A CorpusError that says how to install espeak-ng when it is not on PATH."""
    if shutil.which(ESPEAK) is None:
        raise CorpusError(f"{ESPEAK} not found on PATH; {ESPEAK_HINT}")


def espeak_wave(text: str, voice: str, speed: int, pitch: int, scratch: Path, what: str) -> np.ndarray:
    """``text`` spoken by the espeak-ng ``voice`` (e.g. "de+m3") at ``speed`` words a minute and
    ``pitch`` (0-99), as 16 kHz mono float32; ``scratch`` is the temporary wav it writes (removed),
    ``what`` names the utterance in errors."""
    command = [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(scratch), "--", text]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0 or not scratch.exists():
            reason = result.stderr.strip() or f"exit status {result.returncode}, no output file"
            raise CorpusError(f"espeak-ng failed for {what} ({text!r}): {reason}")
        return load_audio(scratch)
    except subprocess.TimeoutExpired:
        raise CorpusError(f"espeak-ng timed out for {what}") from None
    finally:
        if scratch.exists():
            scratch.unlink()
