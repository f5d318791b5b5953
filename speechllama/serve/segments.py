"""A request's file cut into the segments the batcher schedules, and their results stitched back.

``SpeechToText.run([job])`` cuts a long file into segments at pauses and decodes them all in one
call, which would hold the one decoding thread for the whole file: every other request would wait
behind it. Here the server cuts the file itself, the way ``run`` does (``speechllama.segment``'s
``segment_wave`` with the model's compressor, pause labels and segment bound), and makes each
segment a ``Job`` of its own: a wave no longer than the segment bound is one segment, so ``run`` on
it decodes exactly that segment's samples (their features computed from them alone, as ``run``
computes each segment's), as it would inside the whole file. The batcher then
interleaves the segments of many requests (batcher.py), and ``stitch`` puts the file's
``Transcript`` back together: the same segments, texts and word times as ``run([job])`` (a segment's
times shifted by its start; tests/test_serve.py checks served == offline on a long file).

A file of one segment (most requests) is its own one job, unchanged. Where a segment could not be a
job on its own (shorter than audio.MIN_SECONDS, or digital silence that ``run`` would refuse as a
file), or the model is not a ``SpeechToText``, the file stays one job: slower to share, never
different.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..audio import SAMPLE_RATE, AudioError, validate_wave
from ..inference import Job, Segment, SpeechToText, Transcript, Word, target_lang
from ..segment import Span, pause_labels, seconds, segment_wave


@dataclass
class Plan:
    jobs: list[Job]  # decoded in any batches, with any other request's jobs
    stitch: Callable[[list[Transcript]], Transcript]  # one result per job, in order -> the file's


def _one(results: list[Transcript]) -> Transcript:
    return results[0]


def _compressor(model: SpeechToText):
    return getattr(model.bundle.model, "compressor", None)


def _spans(model: SpeechToText, wave) -> list[Span]:
    """The file's segments, as ``SpeechToText.run`` finds them."""
    bundle = model.bundle
    trained_s = bundle.config.data.max_seconds
    with torch.inference_mode():
        return segment_wave(wave, _compressor(model), bundle.cmvn, model.max_segment_s or trained_s,
                            trained_s, pause_labels(bundle.ctc_tokenizer))


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
    spans = _spans(model, job.wave)
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
    compressor = _compressor(model)
    aligns = (job.task == "asr" and job.word_timestamps and compressor is not None
              and model.bundle.ctc_tokenizer is not None)
    samples = compressor.frame_samples if aligns else 0

    def stitch(results: list[Transcript]) -> Transcript:
        texts, words = [], [] if aligns else None
        for span, k in zip(spans, where):
            if k is None:
                texts.append("")
                continue
            part = results[k]
            if len(part.segments) != 1:
                raise RuntimeError(f"{jobs[k].name}: decoded as {len(part.segments)} segments, not 1")
            texts.append(part.segments[0].text)
            if words is not None:
                if part.words is None:  # as run(): no word times where one segment has none
                    words = None
                else:
                    words += [Word(_shift(w.start, span, samples), _shift(w.end, span, samples), w.word)
                              for w in part.words]
        segments = [Segment(i, seconds(s.start), seconds(s.end), t)
                    for i, (s, t) in enumerate(zip(spans, texts))]
        return Transcript(job.task, target_lang(job), seconds(len(job.wave)), " ".join(t for t in texts if t),
                          segments, words)

    return Plan(jobs, stitch)
