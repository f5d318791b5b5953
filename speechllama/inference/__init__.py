"""Inference: ``speechllama.load(PATH)`` gives a :class:`SpeechToText` (``api``); long files are cut
at pauses (``segment``), words timed (``align``), transcripts written as subtitles (``subtitles``),
and a trained run exported as a self-contained folder (``export``). Nothing here imports training."""

from .api import (
                  AudioLike,
                  Job,
                  Request,
                  Segment,
                  SpeechToText,
                  Transcript,
                  Word,
                  features_of,
                  load,
                  target_lang,
                  wave_of,
)

__all__ = ["AudioLike", "Job", "Request", "Segment", "SpeechToText", "Transcript", "Word", "features_of",
           "load", "target_lang", "wave_of"]
