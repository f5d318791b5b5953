"""A request's file cut into the segments the batcher schedules, and their results stitched back.

``SpeechToText.run([job])`` cuts a long file into segments at pauses and decodes them all in one
call, which would hold the one decoding thread for the whole file: every other request would wait
behind it. Here the server cuts the file itself, the way ``run`` does (``speechllama.inference.segment``'s
``segment_wave`` with the model's compressor, pause labels and segment bound), and makes each
segment a ``Job`` of its own: a wave no longer than the segment bound is one segment, so ``run`` on
it decodes exactly that segment's samples (their features computed from them alone, as ``run``
computes each segment's), as it would inside the whole file. The batcher then
interleaves the segments of many requests (batcher.py), and ``stitch`` puts the file's
``Transcript`` back together: the same segments, texts and word times as ``run([job])`` (a segment's
times shifted by its start; tests/test_serve.py checks served == offline on a long file). The cuts
are ``SpeechToText.segments``, the one place that decides them.

A file of one segment (most requests) is its own one job, unchanged. Where a segment could not be a
job on its own (shorter than audio.MIN_SECONDS, or digital silence that ``run`` would refuse as a
file), or the model is not a ``SpeechToText``, the file stays one job: slower to share, never
different.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..audio import SAMPLE_RATE, AudioError, validate_wave
from ..inference.api import Job, Segment, SpeechToText, Transcript, Word, file_words, target_lang
from ..inference.segment import Span, seconds


@dataclass
class Plan:
    jobs: list[Job]  # decoded in any batches, with any other request's jobs
    stitch: Callable[[list[Transcript]], Transcript]  # one result per job, in order -> the file's


def _one(results: list[Transcript]) -> Transcript:
    return results[0]


def _shift(t: float, span: Span, samples: int) -> float:
    """A word time in a segment decoded alone (``min(seconds(a * samples), seconds(length))``, a the
    compressor frame, ``samples`` its length) -> that time in the file, as ``run`` on the whole file
    gives it (``min(seconds(start + a * samples), seconds(end))``): segments start on a frame."""
    if t < seconds(span.end - span.start):
        frame = round(t * SAMPLE_RATE / samples)
        return min(seconds(span.start + frame * samples), seconds(span.end))
    return seconds(span.end)  # clipped to the segment's end


def plan(model, job: Job) -> Plan:
    """``job`` as the jobs of its segments (one job where it is one segment, see the module)."""
    whole = Plan([job], _one)
    if not isinstance(model, SpeechToText) or job.task not in ("asr", "st"):
        return whole  # (a bad task: run() names it)
    spans = model.segments(job.wave)
    if len(spans) <= 1:
        return whole
    jobs, where = [], []  # where: per span, the index of its job (None: silent, not decoded)
    for k, span in enumerate(spans):
        if span.silent:
            where.append(None)
            continue
        try:
            wave = validate_wave(job.wave[span.start : span.end], SAMPLE_RATE, job.name)
        except AudioError:
            return whole
        where.append(len(jobs))
        jobs.append(Job(wave, job.task, job.src_lang, job.tgt_lang, job.word_timestamps,
                        f"{job.name} (segment {k}: {seconds(span.start)}-{seconds(span.end)} s)"))
    timed = job.task == "asr" and job.word_timestamps and model.aligns
    samples = model.compressor.frame_samples if timed else 0

    def stitch(results: list[Transcript]) -> Transcript:
        segments = []
        for i, (span, k) in enumerate(zip(spans, where)):
            text, words = "", [] if timed else None
            if k is not None:
                part = results[k]
                if len(part.segments) != 1:
                    raise RuntimeError(f"{jobs[k].name}: decoded as {len(part.segments)} segments, not 1")
                text, words = part.segments[0].text, part.segments[0].words
                if words is not None:
                    words = [Word(_shift(w.start, span, samples), _shift(w.end, span, samples), w.word)
                             for w in words]
            segments.append(Segment(i, seconds(span.start), seconds(span.end), text, words))
        return Transcript(job.task, target_lang(job), seconds(len(job.wave)),
                          " ".join(s.text for s in segments if s.text), segments,
                          file_words(job.name, segments) if timed else None)

    return Plan(jobs, stitch)
