"""A :class:`~speechllama.inference.Transcript` as subtitles (SRT, WebVTT) and as the response
bodies of OpenAI's audio API (``text``, ``json``, ``verbose_json``), in OpenAI's shapes; the CLI's
``--format`` and the server's ``response_format`` both render through :func:`render`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .api import Segment, Transcript

FORMATS = ("text", "json", "verbose_json", "srt", "vtt")
MEDIA_TYPES = {"text": "text/plain; charset=utf-8", "json": "application/json",
               "verbose_json": "application/json", "srt": "text/plain; charset=utf-8",
               "vtt": "text/vtt; charset=utf-8"}
OPENAI_TASK = {"asr": "transcribe", "st": "translate"}  # verbose_json's "task"


def timestamp(seconds: float, decimal: str = ",") -> str:
    """Seconds -> ``HH:MM:SS,mmm`` (SRT; ``decimal="."`` for WebVTT)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    return f"{hours:02d}:{minutes:02d}:{ms // 1000:02d}{decimal}{ms % 1000:03d}"


def _cues(segments: Sequence[Segment]) -> list[tuple[float, float, str]]:
    """(start, end, one-line text) of the segments that have text: a blank line would end a cue
    early, and "-->" inside one would read as a timing line."""
    cues = [(s.start, s.end, " ".join(s.text.split()).replace("-->", "->")) for s in segments]
    return [c for c in cues if c[2]]


def to_srt(segments: Sequence[Segment]) -> str:
    """SubRip: numbered cues from 1, ``00:00:01,500 --> 00:00:04,000``, a blank line after each."""
    return "".join(f"{k}\n{timestamp(a)} --> {timestamp(b)}\n{text}\n\n"
                   for k, (a, b, text) in enumerate(_cues(segments), start=1))


def to_vtt(segments: Sequence[Segment]) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues ``00:00:01.500 --> 00:00:04.000``."""
    return "WEBVTT\n\n" + "".join(f"{timestamp(a, '.')} --> {timestamp(b, '.')}\n{text}\n\n"
                                  for a, b, text in _cues(segments))


def to_json(transcript: Transcript) -> dict:
    """OpenAI's ``json`` response: ``{"text": ...}``."""
    return {"text": transcript.text}


def to_verbose_json(transcript: Transcript, words: bool = True) -> dict:
    """OpenAI's ``verbose_json``: task ("transcribe"/"translate"), language, duration, text,
    segments [{id, start, end, text}], and words [{word, start, end}] when ``words`` is asked for
    and the transcript has them (``Transcript.words`` is not None)."""
    out = {"task": OPENAI_TASK.get(transcript.task, transcript.task),
           "language": transcript.language, "duration": transcript.duration,
           "text": transcript.text,
           "segments": [{"id": s.id, "start": s.start, "end": s.end, "text": s.text}
                        for s in transcript.segments]}
    if words and transcript.words is not None:
        out["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in transcript.words]
    return out


def render(transcript: Transcript, fmt: str, words: bool = True) -> str:
    """The transcript as ``fmt`` (one of FORMATS); ``words``: for verbose_json."""
    if fmt == "text":
        return transcript.text
    if fmt == "json":
        return json.dumps(to_json(transcript), ensure_ascii=False)
    if fmt == "verbose_json":
        return json.dumps(to_verbose_json(transcript, words), ensure_ascii=False)
    if fmt == "srt":
        return to_srt(transcript.segments)
    if fmt == "vtt":
        return to_vtt(transcript.segments)
    raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
