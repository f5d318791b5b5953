"""Inference API: ``model = speechllama.load(PATH)``, ``model.translate(...)``, ``model.transcribe(...)``."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import SAMPLE_RATE, load_audio, validate_wave
from ..data.batching import LengthBucketSampler, pad_feats
from ..data.features import FbankExtractor
from ..device import resolve_device
from ..errors import UsageError
from ..models.build import SpeechLLMBundle, load_speech_llm
from ..models.decode import DecodingOptions, token_budget
from ..models.prompt import Prompter, stop_ids
from .segment import Span, compressor_log_probs, pause_labels, seconds, segment_wave

AudioLike = str | os.PathLike | np.ndarray

# ctc_weight of joint CTC/LLM transcription where a model allows it (DecodingOptions.ctc_weight=None);
# chosen on the demo's dev split, docs/design.md "Joint CTC/LLM decoding"
DEFAULT_CTC_WEIGHT = 0.5


@dataclass(frozen=True)
class Request:
    """One decoding request: features and the instruction to follow."""

    feats: torch.Tensor  # (T, D) raw (un-normalised) features of the model's backbone (features_of)
    task: str  # "asr" or "st"
    src_lang: str | None  # None: the prompt does not name the source language
    tgt_lang: str


@dataclass(frozen=True, eq=False)
class Job:
    """One whole file to decode (any length; long ones are cut into segments)."""

    wave: np.ndarray  # (N,) float32 samples, 16 kHz mono
    task: str = "asr"  # "asr" or "st"
    src_lang: str | None = None  # None: the prompt does not name the source language
    tgt_lang: str | None = None  # of the text; None: src_lang for "asr" ("" if none), "en" for "st"
    word_timestamps: bool = True  # align words ("asr" only; Transcript.words)
    name: str = "<array>"  # names the job in errors (a file name, an upload)


@dataclass(frozen=True)
class Segment:
    id: int  # 0, 1, ... in time order
    start: float  # seconds from the start of the file
    end: float  # seconds; segments cover the file in order without overlap
    text: str  # "" for silence (every greedy CTC label a pause: not decoded) or no output
    words: list[Word] | None = None  # its word times; None: not asked for, or not alignable


@dataclass(frozen=True)
class Word:
    """Where the compressor fires the word's CTC labels (they are peaky: a label lasts a frame or
    two), so a word's span can be shorter than its sound; +-40 ms (one frame)."""

    start: float  # seconds from the start of the file, inside its segment
    end: float  # one frame after its last label
    word: str  # a whitespace-separated token of the segment's text


@dataclass
class Transcript:
    """A decoded file. ``words`` is None when word times are not available: translations (their
    words have no CTC labels), ``Job.word_timestamps=False``, a model without a CTC compressor and
    its labels; [] for an empty transcript. A segment whose text the labels cannot spell (a
    character or token they lack) or that no CTC path fits has ``Segment.words`` None and adds no
    words here; the other segments keep theirs, and a warning names the segments left out."""

    task: str  # "asr" or "st"
    language: str  # of ``text``: the source language for "asr", the target for "st" ("" unknown)
    duration: float  # seconds
    text: str  # the segments' texts joined by single spaces
    segments: list[Segment]
    words: list[Word] | None


def file_words(name: str, segments: list[Segment]) -> list[Word]:
    """The words of a file: its segments' words in order; a warning names the segments with text
    whose words could not be timed (``Segment.words`` None), whose words are then not listed."""
    missing = [s.id for s in segments if s.text and s.words is None]
    if missing:
        warnings.warn(f"{name}: no word times for segment(s) {missing}: their text cannot be aligned "
                      f"to the CTC labels (a character they lack, or no CTC path fits)", stacklevel=3)
    return [w for s in segments if s.words for w in s.words]


def target_lang(job: Job) -> str:
    """The language a job's text is in (``Job.tgt_lang`` resolved)."""
    if job.tgt_lang is not None:
        return job.tgt_lang
    return (job.src_lang or "") if job.task == "asr" else "en"


def wave_of(audio: AudioLike) -> np.ndarray:
    """Path -> load_audio; an array is checked and taken as 16 kHz mono float samples."""
    return validate_wave(audio, SAMPLE_RATE) if isinstance(audio, np.ndarray) else load_audio(audio)


def features_of(audio: AudioLike, model: SpeechToText | None = None) -> torch.Tensor:
    """Path or 16 kHz array (:func:`wave_of`) -> the features ``model`` reads (T, D): its CTC
    compressor backbone's (fbank or Whisper encoder states); fbank (T, 80) without a model."""
    wave = wave_of(audio)
    return (model.features if model is not None else FbankExtractor())([wave])[0]


class SpeechToText:
    """A trained Speech-LLaMA model ready to decode; batches requests by length."""

    # the longest segment of a long file, seconds; None: the model's data.max_seconds, the longest
    # clip it was trained on (docs/design.md "Long audio: segments cut at pauses")
    max_segment_s: float | None = None

    def __init__(self, bundle: SpeechLLMBundle, options: DecodingOptions = DecodingOptions(),
                 max_frames: int = 16000):
        self.bundle, self.max_frames = bundle, max_frames
        self.device = next(bundle.model.parameters()).device  # load() placed the model
        self.ctc_map, self.no_joint = joint_ctc_map(bundle)
        self.compressor = getattr(bundle.model, "compressor", None)  # the encoder-decoder has none
        # its acoustic front end (models/backbones.py): the compressor's, or the encoder-decoder's
        self.backbone = (self.compressor if self.compressor is not None else bundle.model).backbone
        self.features, self.feature_rate = self.backbone.features, self.backbone.feature_rate
        self.options = self.resolve(options)
        self.prompter = Prompter(bundle.tokenizer, bundle.config.llm.system_prompt)

    def resolve(self, options: DecodingOptions) -> DecodingOptions:
        """``options`` with ctc_weight decided: None becomes DEFAULT_CTC_WEIGHT where this model can
        decode transcripts jointly with its CTC compressor, else 0; a positive weight it cannot use
        is an error."""
        if options.ctc_weight is None:
            weight = DEFAULT_CTC_WEIGHT if self.ctc_map is not None else 0.0
            return dataclasses.replace(options, ctc_weight=weight)
        if options.ctc_weight > 0 and self.ctc_map is None:
            raise UsageError(f"{self.bundle.path}: joint CTC/LLM decoding (ctc_weight="
                             f"{options.ctc_weight}) is not possible: {self.no_joint}")
        return options

    def translate(self, audio: AudioLike | Sequence[AudioLike], src_lang: str | None = None,
                  tgt_lang: str = "en", options: DecodingOptions | None = None,
                  return_segments: bool = False):
        """Speech (any length) -> text in ``tgt_lang``; one audio gives a str, a list gives a list;
        ``return_segments``: a :class:`Transcript` (with its timed segments) instead of a str."""
        return self._run(audio, "st", src_lang, tgt_lang, options, return_segments)

    def transcribe(self, audio: AudioLike | Sequence[AudioLike], src_lang: str | None = None,
                   options: DecodingOptions | None = None, return_segments: bool = False):
        """Speech (any length) -> text in its own language; ``return_segments``: a
        :class:`Transcript` with timed segments and words (where the CTC labels allow them)."""
        return self._run(audio, "asr", src_lang, src_lang or "", options, return_segments)

    def _run(self, audio, task, src_lang, tgt_lang, options, return_segments):
        single = isinstance(audio, (str, os.PathLike, np.ndarray))
        items = [audio] if single else list(audio)
        jobs = [Job(wave_of(a), task, src_lang, tgt_lang, return_segments,
                    "<array>" if isinstance(a, np.ndarray) else str(a)) for a in items]
        out = self.run(jobs, options)
        out = out if return_segments else [t.text for t in out]
        return out[0] if single else out

    def run(self, jobs: Sequence[Job], options: DecodingOptions | None = None) -> list[Transcript]:
        """Decode whole files of any length: each job is cut into segments at pauses
        (:mod:`speechllama.inference.segment`), the segments of all jobs go through :meth:`decode` together
        (length-bucketed batches of at most ``max_frames``: decoding memory stays bounded; a
        10-minute file's features are 19 MB) and are stitched per job. A job's result does not
        depend on the other jobs of the call (its segments are found from its own audio alone)."""
        plans = [self._segments(job) for job in jobs]  # per job: wave (N,), spans, feats (T_i, D)
        requests = [Request(f, job.task, job.src_lang, target_lang(job))
                    for job, (_, spans, feats) in zip(jobs, plans)
                    for span, f in zip(spans, feats) if not span.silent]
        texts = iter(self.decode(requests, options) if requests else [])
        out = []
        for job, (wave, spans, feats) in zip(jobs, plans):
            said = ["" if s.silent else next(texts) for s in spans]
            timed = job.task == "asr" and job.word_timestamps and self.aligns
            words = self._words(spans, feats, said) if timed else [None] * len(spans)
            segments = [Segment(i, seconds(s.start), seconds(s.end), t, w)
                        for i, (s, t, w) in enumerate(zip(spans, said, words))]
            out.append(Transcript(job.task, target_lang(job), seconds(len(wave)),
                                  " ".join(t for t in said if t), segments,
                                  file_words(job.name, segments) if timed else None))
        return out

    @property
    def aligns(self) -> bool:
        """Whether this model gives word times: its CTC compressor and labels (Transcript.words)."""
        return self.compressor is not None and self.bundle.ctc_tokenizer is not None

    def segments(self, wave: np.ndarray) -> list[Span]:
        """Where a checked wave (16 kHz) is cut into the segments :meth:`run` decodes: at pauses,
        none longer than ``max_segment_s`` (default: the longest clip the model was trained on)."""
        trained_s = self.bundle.config.data.max_seconds
        with torch.inference_mode():
            return segment_wave(wave, self.compressor, self.bundle.cmvn, self.max_segment_s or trained_s,
                                trained_s, pause_labels(self.bundle.ctc_tokenizer), self.backbone.frame_samples)

    @torch.inference_mode()
    def _segments(self, job: Job) -> tuple[np.ndarray, list[Span], list[torch.Tensor]]:
        """A job's checked wave, its segments and their features (T_i, D)."""
        if job.task not in ("asr", "st"):
            raise UsageError(f"{job.name}: task must be 'asr' or 'st', got {job.task!r}")
        wave = validate_wave(job.wave, SAMPLE_RATE, str(job.name))
        spans = self.segments(wave)
        return wave, spans, self.features([wave[s.start : s.end] for s in spans])

    @torch.inference_mode()
    def _words(self, spans: list[Span], feats: list[torch.Tensor], texts: list[str],
               ) -> list[list[Word] | None]:
        """Each segment's word times: its text force-aligned to the compressor's CTC log-probs
        (:mod:`speechllama.inference.align`); None for a segment where that is not possible (Transcript)."""
        from .align import word_frames

        compressor = self.compressor
        samples = compressor.frame_samples
        device = next(compressor.parameters()).device
        out = []
        for span, f, text in zip(spans, feats, texts):
            if not text:
                out.append([])
                continue
            f = torch.as_tensor(f, device=device)  # the segment's features, on the model's device
            log_probs = compressor_log_probs(compressor, self.bundle.cmvn(f))  # (F, V)
            found = word_frames(self.bundle.ctc_tokenizer, text, log_probs)
            end = seconds(span.end)
            out.append(None if found is None else
                       [Word(min(seconds(span.start + a * samples), end),
                             min(seconds(span.start + b * samples), end), w) for w, a, b in found])
        return out

    @torch.inference_mode()
    def decode(self, requests: Sequence[Request], options: DecodingOptions | None = None) -> list[str]:
        """Decode requests in length-sorted batches; results in the order given."""
        options = self.options if options is None else self.resolve(options)
        eos = stop_ids(self.bundle.tokenizer)
        texts = [""] * len(requests)
        joint = bool(options.ctc_weight)  # transcripts decoded jointly with CTC, in batches of their own
        for group in ([i for i, r in enumerate(requests) if r.task == "asr" and joint],
                      [i for i, r in enumerate(requests) if r.task != "asr" or not joint]):
            if not group:
                continue
            longest = max(requests[i].feats.shape[0] for i in group)
            sampler = LengthBucketSampler([requests[i].feats.shape[0] for i in group],
                                          max(self.max_frames, longest), shuffle=False)
            ctc_map = self.ctc_map if joint and requests[group[0]].task == "asr" else None
            for batch in sampler.batches(0):
                reqs = [requests[group[k]] for k in batch]
                feats, lengths = pad_feats([self.bundle.cmvn(r.feats) for r in reqs], self.device)
                prompts = [self.prompter(r.task, r.src_lang, r.tgt_lang) for r in reqs]
                budget = token_budget(lengths.float() / self.feature_rate, options)  # seconds
                extra = {"ctc_map": ctc_map} if ctc_map is not None else {}
                ids = self.bundle.model.generate(feats, lengths, [p[0] for p in prompts],
                                                 [p[1] for p in prompts], eos, options, budget, **extra)
                for k, tokens in zip(batch, ids):
                    texts[group[k]] = self.bundle.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return texts


def joint_ctc_map(bundle: SpeechLLMBundle) -> tuple[torch.Tensor | None, str]:
    """The CTC label of each LLM token when the model's transcripts can be decoded jointly with its
    compressor (its CTC labels are the LLM's tokens and its ASR target is the normalised text, so a
    transcript is a CTC label sequence), else None and the reason."""
    from ..models.ctc_prefix import llm_to_ctc_map
    from ..models.speech_llm import SpeechLLM
    from ..text import UNK, LLMTokenCTCTokenizer

    model, cfg = bundle.model, bundle.config
    if not isinstance(model, SpeechLLM):
        return None, "only a decoder-only Speech-LLaMA model has a CTC compressor in front of its LLM"
    if model.zero_audio:
        return None, "a zero-audio control must not hear the audio through its compressor"
    if not isinstance(bundle.ctc_tokenizer, LLMTokenCTCTokenizer) \
            or not bundle.ctc_tokenizer.same_llm(bundle.tokenizer):
        return None, ("its compressor's CTC labels are not the LLM's tokens (compressor.labels="
                      "llm_tokens with compressor.label_llm the stage-2 LLM)")
    if cfg.speech_llm.asr_target != "normalized":
        return None, "it was trained on verbatim transcripts (speech_llm.asr_target=normalized is needed)"
    size = model.llm.get_output_embeddings().weight.shape[0]
    return llm_to_ctc_map(size, bundle.ctc_tokenizer.llm_ids, unk=UNK), ""


def load(path: str | os.PathLike, options: DecodingOptions = DecodingOptions(),
         dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "auto") -> SpeechToText:
    """Load a trained Speech-LLaMA model (checkpoint folder, run folder or exported model).

    ``device``: auto (CUDA when available, else the CPU) | cpu | cuda | cuda:N; the model and
    every batch live there (this is the one place inference places them).

    ``dtype``: of the frozen pretrained LLM's weights (the audio encoder and LoRA stay float32).
    bf16 by default: decoding is bound by reading weights, and bf16 weights halve that
    (bench/bench_speech_llm.py measures both; autocast instead would re-cast every step)."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    bundle = load_speech_llm(Path(path), frozen_dtype=dtype)
    bundle.model.to(device)
    return SpeechToText(bundle, options)
