"""Stage 2: train the audio encoder and LoRA on (audio, instruction, target text), ST and ASR rows
together; the task of a row is chosen by its instruction."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer

from ..audio import CMVN
from ..checkpoint import load_tensors, save_tensors
from ..config import ExperimentConfig
from ..data import Utterance, read_manifest
from ..data.batching import LengthBucketSampler
from ..data.features import BackboneFeatures, training_audio, training_batch, training_features_store
from ..device import rank0_first
from ..errors import UsageError
from ..models.build import (
    build_speech_llm,
    load_compressor,
    load_speech_llm_weights,
    output_vocab_ids,
    resolve_llm_path,
    speech_llm_state,
)
from ..models.llm import create_scratch_llm, weights_hash
from ..models.prompt import Prompter
from ..models.shipped import is_shipped
from ..text import normalize, word_start_prefix
from .ctc import plan_augmentation


def target_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def target_text(u: Utterance, asr_target: str, tokenizer) -> str:
    """The text a row is trained to produce, in word-initial form (the tokenizer's word-start
    marker first, as a word after "English:" is spelled in running text; the decoder's output is
    stripped, so it never shows): its tgt_text, or for ASR rows with ``asr_target=normalized`` the
    normalised transcript, each word in the LLM tokens the compressor's labels spell."""
    text = normalize(u.tgt_text) if u.task == "asr" and asr_target == "normalized" else u.tgt_text
    return word_start_prefix(tokenizer) + text


class SpeechLLMTask:
    """Data + model + cross-entropy loss for ``speechllama train speech-llm``."""

    def __init__(self, cfg: ExperimentConfig, resume_from: Path | None = None,
                 rank: int = 0, world_size: int = 1, progress: bool = True):
        s = cfg.speech_llm
        if not s.compressor:
            raise UsageError("stage 2 needs a trained compressor: pass --compressor CKPT "
                             "(or speech_llm.compressor=...)")
        bundle = load_compressor(s.compressor)
        cfg.compressor, cfg.features.n_mels = bundle.config.compressor, bundle.config.features.n_mels
        self.cfg, self.cmvn, self.ctc_tokenizer = cfg, bundle.cmvn, bundle.tokenizer
        keep = training_audio(cfg)  # all recordings, or the data.max_hours sample stage 1 drew
        rows = [u for u in read_manifest(cfg.data.train) if u.audio in keep]
        seq2seq = cfg.speech_llm.system == "encoder_decoder"
        if cfg.llm.init == "scratch" or seq2seq:
            if not cfg.llm.path or is_shipped(cfg.llm.path):
                raise UsageError("a model trained from scratch needs llm.path: the folder to "
                                 "create its tokenizer (and LLM) in")
            lc = cfg.llm
            rank0_first(create_scratch_llm, lc.path, [u.tgt_text for u in rows], lc.scratch_hidden,
                        lc.scratch_layers, lc.scratch_heads, lc.scratch_ff, lc.scratch_vocab,
                        cfg.train.seed, with_model=not seq2seq)
        llm_path = rank0_first(resolve_llm_path, cfg)  # transformers saves on rank 0 only
        # the encoder-decoder has no base LLM weights, only its tokenizer in that folder
        cfg.llm.path, cfg.llm.weights_hash = str(llm_path), "" if seq2seq else weights_hash(llm_path)
        self.tokenizer = AutoTokenizer.from_pretrained(llm_path, local_files_only=True)
        self.extractor = BackboneFeatures(bundle.model.backbone)
        self.store = training_features_store(cfg, [u.audio for u in rows], self.extractor,
                                             progress=progress and rank == 0)
        self.items = self._usable(rows, rank)
        torch.manual_seed(cfg.train.seed)  # same initial weights on every run and every rank
        self.model, self.tokenizer = build_speech_llm(
            cfg, bundle.model, None, bundle.tokenizer,
            frozen_dtype=torch.bfloat16 if cfg.train.bf16 else torch.float32,
            vocab_ids=output_vocab_ids(self.tokenizer, [t for _, t in self.items]))
        self.prompter = Prompter(self.tokenizer, cfg.llm.system_prompt)
        self.augmenter, self.speeds, frames = plan_augmentation(
            cfg, self.store, [u.audio for u, _ in self.items])
        self.sampler = LengthBucketSampler(frames, cfg.data.max_frames, cfg.train.seed,
                                           rank=rank, world_size=world_size)

    def _usable(self, rows: list[Utterance], rank: int):
        items, skipped = [], 0
        max_frames = int(self.cfg.data.max_seconds * self.extractor.backbone.feature_rate)
        for u in rows:
            tgt = target_ids(self.tokenizer, target_text(u, self.cfg.speech_llm.asr_target,
                                                         self.tokenizer))
            if (u.audio in self.store and self.store.num_frames(u.audio) <= max_frames
                    and len(tgt) <= self.cfg.speech_llm.max_target_tokens):
                items.append((u, tgt))
            else:
                skipped += 1
        if skipped and rank == 0:
            print(f"{self.cfg.data.train}: {skipped} of {len(rows)} rows skipped (unreadable audio, "
                  f"longer than data.max_seconds or speech_llm.max_target_tokens)", file=sys.stderr)
        if not items:
            raise UsageError(f"{self.cfg.data.train}: no usable training rows")
        return items

    def collate(self, indices: list[int], generator: torch.Generator) -> dict:
        """The batch of ``indices`` on the CPU (in a DataLoader worker): features, CMVN,
        padding, SpecAugment, prompts (some without the source language) and targets."""
        rows = [self.items[i] for i in indices]
        feats, lengths = training_batch(self.store, [u.audio for u, _ in rows], generator, self.cmvn,
                                        self.cfg.features, self.augmenter,
                                        self.speeds and [self.speeds[i] for i in indices], self.extractor)
        unnamed = torch.rand(len(rows), generator=generator) < self.cfg.speech_llm.unnamed_language_prob
        prompts = [self.prompter(u.task, None if drop else u.src_lang, u.tgt_lang)
                   for (u, _), drop in zip(rows, unnamed.tolist())]
        return {"feats": feats, "feat_lengths": lengths, "before": [p[0] for p in prompts],
                "after": [p[1] for p in prompts], "targets": [t for _, t in rows]}

    def loss(self, model: nn.Module, batch: dict):
        targets = batch["targets"]
        loss = model(batch["feats"], batch["feat_lengths"], batch["before"], batch["after"],
                     targets)
        return loss, {"items": len(targets), "tokens": sum(len(t) for t in targets)}

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        tensors = speech_llm_state(model)
        tensors.update({f"cmvn.{k}": v for k, v in self.cmvn.state_dict().items()})
        return tensors

    def save(self, folder: Path, tensors: dict[str, torch.Tensor]) -> None:
        save_tensors(tensors, folder / "model.safetensors")
        self.ctc_tokenizer.save(folder)

    def load(self, folder: Path, model: nn.Module) -> None:
        tensors = load_tensors(folder / "model.safetensors")
        load_speech_llm_weights(model, tensors)
        self.cmvn = CMVN.from_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("cmvn.")})
