"""Subtitles and OpenAI response bodies from hand-made transcripts."""

import json
import re

import pytest

from speechllama.inference.api import Segment, Transcript, Word
from speechllama.inference.subtitles import FORMATS, render, timestamp, to_json, to_srt, to_verbose_json, to_vtt


def transcript(task="asr", words=True) -> Transcript:
    segments = [Segment(0, 0.0, 2.5, "Guten Tag."), Segment(1, 2.5, 4.0, ""),
                Segment(2, 4.0, 3725.4996, "Wie geht's?\nGut --> danke")]
    timed = [Word(0.3, 0.6, "Guten"), Word(0.7, 1.1, "Tag."), Word(4.2, 4.5, "Wie")]
    text = "Guten Tag. Wie geht's?\nGut --> danke"
    return Transcript(task, "de", 3725.5, text, segments, timed if words else None)


@pytest.mark.parametrize("seconds, srt", [(0, "00:00:00,000"), (0.0004, "00:00:00,000"),
                                          (1.0005, "00:00:01,000"), (59.9996, "00:01:00,000"),
                                          (3725.5, "01:02:05,500"), (-0.01, "00:00:00,000")])
def test_timestamp(seconds, srt):
    assert timestamp(seconds) == srt
    assert timestamp(seconds, ".") == srt.replace(",", ".")


CUE = r"(\d\d):(\d\d):(\d\d)[,.](\d{3}) --> (\d\d):(\d\d):(\d\d)[,.](\d{3})"


def cue_times(match) -> tuple[float, float]:
    h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g) for g in match.groups()[:8])
    return h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000


def test_srt_numbers_cues_skips_empty_segments_and_keeps_each_cue_one_block():
    srt = to_srt(transcript().segments)
    blocks = srt.split("\n\n")
    assert blocks[-1] == "" and len(blocks) == 3  # two cues, each ended by a blank line
    for k, block in enumerate(blocks[:-1], start=1):
        number, timing, text = block.split("\n")
        assert number == str(k) and re.fullmatch(CUE.replace("[,.]", ","), timing) and text
    assert blocks[1].endswith("Wie geht's? Gut -> danke")  # no line break, no "-->" in a cue
    times = [cue_times(m) for m in re.finditer(CUE, srt)]
    assert times == [(0.0, 2.5), (4.0, 3725.5)]
    assert all(a <= b <= c <= d for (a, b), (c, d) in zip(times, times[1:]))


def test_vtt_has_its_header_and_dotted_times():
    vtt = to_vtt(transcript().segments)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nGuten Tag.\n\n")
    assert vtt.endswith("00:00:04.000 --> 01:02:05.500\nWie geht's? Gut -> danke\n\n")
    assert "," not in "".join(re.findall(CUE, vtt)[0]) and to_vtt([]) == "WEBVTT\n\n"


def test_verbose_json_in_openai_shape():
    body = to_verbose_json(transcript())
    assert list(body) == ["task", "language", "duration", "text", "segments", "words"]
    assert body["task"] == "transcribe" and body["language"] == "de" and body["duration"] == 3725.5
    assert body["segments"][1] == {"id": 1, "start": 2.5, "end": 4.0, "text": ""}
    assert body["words"][0] == {"word": "Guten", "start": 0.3, "end": 0.6}
    assert "words" not in to_verbose_json(transcript(), words=False)
    translated = to_verbose_json(transcript("st", words=False))
    assert translated["task"] == "translate" and "words" not in translated


def test_render_every_format():
    t = transcript()
    assert set(FORMATS) == {"text", "json", "verbose_json", "srt", "vtt"}
    assert render(t, "text") == t.text
    assert json.loads(render(t, "json")) == to_json(t) == {"text": t.text}
    assert json.loads(render(t, "verbose_json")) == to_verbose_json(t)
    assert render(t, "srt") == to_srt(t.segments) and render(t, "vtt") == to_vtt(t.segments)
    with pytest.raises(ValueError, match="unknown format 'docx'; choose one of text, json"):
        render(t, "docx")
