"""Stage 1: train the CTC compressor on source transcripts (all languages together)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ..audio import CMVN
from ..audio.augment import Augmenter
from ..checkpoint import load_tensors, save_tensors
from ..config import ExperimentConfig
from ..data.batching import LengthBucketSampler, pad_tokens
from ..data.features import BackboneFeatures, FeatureStore, manifest_recordings, training_audio, training_batch
from ..device import rank0_first
from ..models.build import build_compressor, compressor_state, feature_extractor, label_llm_path, split_state
from ..models.ctc_compressor import ctc_loss
from ..text import CTCTokenizer, LLMTokenCTCTokenizer, load_ctc_tokenizer


def recordings(cfg: ExperimentConfig, progress: bool = True, extractor=None):
    """:func:`manifest_recordings` of the training manifest (its ``data.max_hours`` sample) with
    the features of ``compressor.backbone``."""
    extractor = extractor or rank0_first(feature_extractor, cfg)
    return manifest_recordings(cfg.data.train, extractor, progress, training_audio(cfg))


def plan_augmentation(cfg: ExperimentConfig, store: FeatureStore, paths: list[str],
                      min_frames: list[int] | None = None):
    """(augmenter, speeds, lengths) for the training rows ``paths``: the Augmenter (None when
    augment.prob is 0; babble from these recordings), each row's feasible speeds (at least
    ``min_frames`` frames, at most data.max_frames) and each row's length for the batch sampler:
    its cached frames, or with augmentation the most it can have at its slowest speed, so that a
    batch of slowed-down rows still fits data.max_frames."""
    frames = [store.num_frames(p) for p in paths]
    if cfg.augment.prob == 0:
        return None, None, frames
    augmenter = Augmenter(cfg.augment, sorted(set(paths)))
    speeds = [augmenter.speeds_for(n, cfg.data.max_frames, m)
              for n, m in zip(frames, min_frames or [0] * len(paths))]
    return augmenter, speeds, [augmenter.longest(n, s) for n, s in zip(frames, speeds)]


class CTCTask:
    """Data + model + CTC loss for ``speechllama train ctc``."""

    def __init__(self, cfg: ExperimentConfig, resume_from: Path | None = None,
                 rank: int = 0, world_size: int = 1, progress: bool = True):
        self.cfg = cfg
        recs, self.store = recordings(cfg, progress=progress and rank == 0)
        c = cfg.compressor
        if c.labels == "llm_tokens":  # the labels' LLM is kept in the config, for its tokenizer
            c.label_llm = str(rank0_first(label_llm_path, cfg))
        if resume_from is not None:
            self.tokenizer = load_ctc_tokenizer(resume_from, c.label_llm or None)
        elif c.labels == "llm_tokens":
            from transformers import AutoTokenizer

            llm_tokenizer = AutoTokenizer.from_pretrained(c.label_llm, local_files_only=True)
            self.tokenizer = LLMTokenCTCTokenizer.train([r[1] for r in recs], llm_tokenizer)
        else:  # a sentencepiece model: unigram pieces, or one label per character
            kind = "char" if c.labels == "chars" else "unigram"
            self.tokenizer = CTCTokenizer.train([r[1] for r in recs], c.vocab_size, model_type=kind)
        c.vocab_size = self.tokenizer.vocab_size  # resolved (data may allow fewer)
        self.chars = None
        if c.char_layer:
            if resume_from is not None:
                self.chars = CTCTokenizer((resume_from / "char_tokenizer.model").read_bytes())
            else:
                self.chars = CTCTokenizer.train([r[1] for r in recs], 512, model_type="char")
            c.char_vocab_size = self.chars.vocab_size
        torch.manual_seed(cfg.train.seed)  # same initial weights on every run and every rank
        self.model = build_compressor(cfg, pretrained=resume_from is None)
        self.cmvn = CMVN.from_features(self.store.get(r[0]) for r in recs)
        self.items, skipped = self._usable(recs, self.store, self.model.backbone)
        if skipped and rank == 0:
            print(f"{cfg.data.train}: {skipped} of {len(recs)} recordings skipped (longer than "
                  f"data.max_seconds, or too short for their transcript under CTC)", file=sys.stderr)
        backbone = self.model.backbone
        self.augmenter, self.speeds, frames = plan_augmentation(
            cfg, self.store, [item[0] for item in self.items],
            [backbone.min_features(max(1, len(item[1]), len(item[2]))) for item in self.items])
        self.sampler = LengthBucketSampler(frames, cfg.data.max_frames, cfg.train.seed,
                                           rank=rank, world_size=world_size)

    def _usable(self, recs, store: FeatureStore, backbone):
        items, skipped = [], 0
        max_frames = int(self.cfg.data.max_seconds * backbone.feature_rate)
        for path, text, _ in recs:
            tokens = self.tokenizer.encode(text)
            chars = self.chars.encode(text) if self.chars else tokens
            n = store.num_frames(path)
            fits = int(backbone.out_lengths(torch.tensor(n))) >= max(1, len(tokens), len(chars))
            if tokens and fits and n <= max_frames:
                items.append((path, tokens, chars))
            else:
                skipped += 1
        return items, skipped

    def collate(self, indices: list[int], generator: torch.Generator) -> dict:
        """The batch of ``indices`` on the CPU (in a DataLoader worker): features (augmented and
        SpecAugmented with draws from ``generator``), CMVN, padding, CTC targets."""
        feats, lengths = training_batch(self.store, [self.items[i][0] for i in indices], generator, self.cmvn,
                                        self.cfg.features, self.augmenter,
                                        self.speeds and [self.speeds[i] for i in indices],
                                        BackboneFeatures(self.model.backbone))
        targets, target_lengths = pad_tokens([self.items[i][1] for i in indices])
        batch = {"feats": feats, "feat_lengths": lengths, "targets": targets,
                 "target_lengths": target_lengths}
        if self.chars:
            batch["chars"], batch["char_lengths"] = pad_tokens([self.items[i][2] for i in indices])
        return batch

    def loss(self, model: nn.Module, batch: dict):
        feats, lengths = batch["feats"], batch["feat_lengths"]
        targets, target_lengths = batch["targets"], batch["target_lengths"]
        if not self.chars:
            _, logits, out_lengths = model(feats, lengths)
            loss = ctc_loss(logits, out_lengths, targets, target_lengths)
        else:
            _, logits, out_lengths, char_logits = model(feats, lengths, with_chars=True)
            w = self.cfg.compressor.char_weight
            loss = ((1 - w) * ctc_loss(logits, out_lengths, targets, target_lengths)
                    + w * ctc_loss(char_logits, out_lengths, batch["chars"], batch["char_lengths"]))
        return loss, {"items": len(lengths), "tokens": int(target_lengths.sum())}

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return compressor_state(model, self.cmvn)

    def save(self, folder: Path, tensors: dict[str, torch.Tensor]) -> None:
        save_tensors(tensors, folder / "model.safetensors")
        self.tokenizer.save(folder)
        if self.chars:
            (folder / "char_tokenizer.model").write_bytes(self.chars.model_proto)

    def load(self, folder: Path, model: nn.Module) -> None:
        tensors = load_tensors(folder / "model.safetensors")
        model.load_state_dict(split_state(tensors, "compressor"))
        self.cmvn = CMVN.from_state_dict(split_state(tensors, "cmvn"))
