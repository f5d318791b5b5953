"""Inference API: ``model = speechllama.load(PATH)``, ``model.translate(...)``, ``model.transcribe(...)``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import SAMPLE_RATE, fbank, load_audio, validate_wave
from .data.batching import LengthBucketSampler, pad_feats
from .decode import DecodingOptions, token_budget
from .models.build import SpeechLLMBundle, load_speech_llm

AudioLike = str | os.PathLike | np.ndarray


@dataclass(frozen=True)
class Request:
    """One decoding request: fbank features and the instruction to follow."""

    feats: torch.Tensor  # (T, 80) raw (un-normalised) fbank
    task: str  # "asr" or "st"
    src_lang: str | None  # None: the prompt does not name the source language
    tgt_lang: str


def features_of(audio: AudioLike) -> torch.Tensor:
    """Path -> load_audio -> fbank; an array is taken as 16 kHz mono float samples."""
    if isinstance(audio, np.ndarray):
        return fbank(validate_wave(audio, SAMPLE_RATE))
    return fbank(load_audio(audio))


class SpeechToText:
    """A trained Speech-LLaMA model ready to decode; batches requests by length."""

    def __init__(self, bundle: SpeechLLMBundle, options: DecodingOptions = DecodingOptions(),
                 max_frames: int = 16000):
        from .tasks.speech_llm import Prompter

        self.bundle, self.options, self.max_frames = bundle, options, max_frames
        self.prompter = Prompter(bundle.tokenizer, bundle.config.llm.system_prompt)

    def translate(self, audio: AudioLike | Sequence[AudioLike], src_lang: str | None = None,
                  tgt_lang: str = "en", options: DecodingOptions | None = None):
        """Speech -> text in ``tgt_lang``; one audio gives a str, a list gives a list."""
        return self._run(audio, "st", src_lang, tgt_lang, options)

    def transcribe(self, audio: AudioLike | Sequence[AudioLike], src_lang: str | None = None,
                   options: DecodingOptions | None = None):
        """Speech -> text in its own language."""
        return self._run(audio, "asr", src_lang, src_lang or "", options)

    def _run(self, audio, task, src_lang, tgt_lang, options):
        single = isinstance(audio, (str, os.PathLike, np.ndarray))
        items = [audio] if single else list(audio)
        out = self.decode([Request(features_of(a), task, src_lang, tgt_lang) for a in items], options)
        return out[0] if single else out

    @torch.inference_mode()
    def decode(self, requests: Sequence[Request], options: DecodingOptions | None = None) -> list[str]:
        """Decode requests in length-sorted batches; results in the order given."""
        options = options or self.options
        if not requests:
            return []
        longest = max(r.feats.shape[0] for r in requests)
        sampler = LengthBucketSampler([r.feats.shape[0] for r in requests],
                                      max(self.max_frames, longest), shuffle=False)
        eos = self.bundle.tokenizer.eos_token_id
        texts = [""] * len(requests)
        for batch in sampler.batches(0):
            reqs = [requests[i] for i in batch]
            feats, lengths = pad_feats([self.bundle.cmvn(r.feats) for r in reqs])
            prompts = [self.prompter(r.task, r.src_lang, r.tgt_lang) for r in reqs]
            budget = token_budget(lengths.float() / 100, options)  # 100 fbank frames per second
            ids = self.bundle.model.generate(feats, lengths, [p[0] for p in prompts],
                                             [p[1] for p in prompts], eos, options, budget)
            for i, tokens in zip(batch, ids):
                texts[i] = self.bundle.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return texts


def load(path: str | os.PathLike, options: DecodingOptions = DecodingOptions()) -> SpeechToText:
    """Load a trained Speech-LLaMA model (checkpoint folder, run folder or exported model)."""
    return SpeechToText(load_speech_llm(Path(path)), options)
