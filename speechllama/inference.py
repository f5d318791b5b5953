"""Inference API: ``model = speechllama.load(PATH)``, ``model.translate(...)``, ``model.transcribe(...)``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import SAMPLE_RATE, fbank, load_audio, validate_wave
from .data.batching import LengthBucketSampler, pad_feats
from .decode import DecodingOptions, token_budget
from .device import resolve_device
from .models.build import SpeechLLMBundle, load_speech_llm
from .models.prompt import Prompter, stop_ids

AudioLike = str | os.PathLike | np.ndarray

# ctc_weight of joint CTC/LLM transcription where a model allows it (DecodingOptions.ctc_weight=None);
# chosen on the demo's dev split, docs/design.md "Joint CTC/LLM decoding"
DEFAULT_CTC_WEIGHT = 0.5


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
        self.bundle, self.max_frames = bundle, max_frames
        self.device = next(bundle.model.parameters()).device  # load() placed the model
        self.ctc_map, self.no_joint = joint_ctc_map(bundle)
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
            raise ValueError(f"{self.bundle.path}: joint CTC/LLM decoding (ctc_weight="
                             f"{options.ctc_weight}) is not possible: {self.no_joint}")
        return options

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
                budget = token_budget(lengths.float() / 100, options)  # 100 fbank frames per second
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
    from .ctc_prefix import llm_to_ctc_map
    from .models.speech_llm import SpeechLLM
    from .text import UNK, LLMTokenCTCTokenizer

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
