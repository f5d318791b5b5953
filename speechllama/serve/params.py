"""The fields of OpenAI's ``/v1/audio/transcriptions`` and ``/v1/audio/translations`` forms, checked.

- ``file`` (required): the audio, any format libsndfile decodes.
- ``model`` (required, as in OpenAI's API): any name; the server has one model and answers with it.
- ``language``: the source language, ISO-639-1 (``de``) or its English name (``German``). The prompt
  names it, as in training; without it the prompt leaves the language unnamed (the model was trained
  on such prompts too). verbose_json's ``language`` is that of the text: the source language of a
  transcription ("" when not given), ``en`` for a translation.
- ``prompt``: accepted and not used (the model's prompt is the fixed instruction it was trained with).
- ``response_format``: json (default) | text | verbose_json | srt | vtt.
- ``temperature``: 0..1, accepted and not used: decoding is deterministic (greedy or beam search), so a
  request gets the same text served or offline.
- ``timestamp_granularities[]``: segment | word; verbose_json always has the segments, and has
  ``words`` when word is asked for. Words are for transcriptions: the transcript force-aligned to the
  CTC compressor's output; ``words`` is left out where that is not possible (a model without a
  compressor, a word its CTC labels cannot spell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..inference.subtitles import FORMATS
from ..models.prompt import LANGUAGES
from .errors import APIError
from .form import Form, Upload

GRANULARITIES = ("segment", "word")


@dataclass(frozen=True)
class Params:
    task: str  # "asr" (transcriptions) or "st" (translations)
    upload: Upload
    model: str
    language: str | None  # ISO-639-1 code of the source language; None = not given
    response_format: str
    temperature: float
    granularities: tuple[str, ...]  # asked for: ("segment",) (the default), ("word",) or both


def language_code(value: str) -> str:
    """'de', 'DE' or 'German' -> 'de'; anything else is a 400 listing what the model knows."""
    key = value.strip().lower()
    if key in LANGUAGES:
        return key
    for code, name in LANGUAGES.items():
        if name.lower() == key:
            return code
    raise APIError(400, f"unsupported language {value!r}: use an ISO-639-1 code or its English name, "
                        f"one of {', '.join(sorted(LANGUAGES))}", "language", "unsupported_language")


def _temperature(value: str | None) -> float:
    if value is None or value == "":
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        temperature = math.nan
    if not 0 <= temperature <= 1:
        raise APIError(400, f"temperature must be a number from 0 to 1, got {value!r}", "temperature")
    return temperature


def _granularities(form: Form, task: str) -> tuple[str, ...]:
    values = form.fields.get("timestamp_granularities[]", []) + form.fields.get("timestamp_granularities", [])
    for value in values:
        if value not in GRANULARITIES:
            raise APIError(400, f"timestamp_granularities[] must be 'segment' or 'word', got {value!r}",
                           "timestamp_granularities[]")
    if "word" in values and task != "asr":
        raise APIError(400, "word timestamps are for transcriptions: a translation's words are not "
                            "aligned to the audio", "timestamp_granularities[]")
    return tuple(g for g in GRANULARITIES if g in values) or ("segment",)


def _required(form: Form, name: str) -> str:
    value = form.value(name)
    if value is None or not value.strip():
        raise APIError(400, f"you must provide a '{name}' field", name, "missing_required_parameter")
    return value


def parse_params(form: Form, task: str) -> Params:
    """The checked fields of a transcription (``task="asr"``) or translation (``"st"``) request."""
    uploads = form.files.get("file", [])
    if not uploads:
        raise APIError(400, "you must provide a 'file' field holding the audio (multipart upload)",
                       "file", "missing_required_parameter")
    if len(uploads) > 1:
        raise APIError(400, "one 'file' per request", "file")
    response_format = form.value("response_format") or "json"
    if response_format not in FORMATS:
        raise APIError(400, f"response_format must be one of {', '.join(FORMATS)}, "
                            f"got {response_format!r}", "response_format")
    if (form.value("stream") or "false").lower() not in ("false", "0", ""):
        raise APIError(400, "stream is not supported: the whole result comes in one response", "stream")
    language = form.value("language")
    return Params(task, uploads[0], _required(form, "model"),
                  language_code(language) if language else None, response_format,
                  _temperature(form.value("temperature")), _granularities(form, task))
