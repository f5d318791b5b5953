"""Typed experiment configuration: dataclasses, YAML load/save, command-line overrides.

One dataclass per concern, nested into :class:`ExperimentConfig`. YAML keys mirror the field
names exactly; an unknown key or a value of the wrong type is a :class:`ConfigError` that names
the key. Overrides use dotted paths: ``train.lr=3e-4`` or ``compressor.n_layers=2``.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .atomic import write_text_atomic
from .errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override that does not match the schema (names the key)."""


@dataclass
class FeatureConfig:
    n_mels: int = 80  # log-mel bins, 25 ms window, 10 ms hop (Kaldi fbank)
    spec_augment: bool = True  # SpecAugment on training batches only
    freq_masks: int = 2
    freq_width: int = 27  # max width of one frequency mask, in bins
    time_masks: int = 2
    time_width_ratio: float = 0.05  # max width of one time mask, as a fraction of the row length


@dataclass
class AugmentConfig:
    """Waveform augmentation of training rows before fbank (speechllama/audio/augment.py); evaluation
    and inference never augment."""

    prob: float = 0.0  # share of training rows augmented at all (0 = off: every row from the cache)
    # speed factors (tempo and pitch), one drawn per augmented row; a row skips those that would
    # make it too short for its CTC target or too long for data.max_frames
    speeds: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    noise_prob: float = 0.5  # share of augmented rows with additive noise
    snr_min: float = 5.0  # dB; the noise's SNR is uniform in [snr_min, snr_max]
    snr_max: float = 20.0  # dB
    # one drawn per noisy row: white | pink (1/f) | babble (another training recording mixed in)
    noise_kinds: list[str] = field(default_factory=lambda: ["white", "pink", "babble"])
    telephone_prob: float = 0.1  # share of augmented rows sent through 8 kHz and 300-3400 Hz
    telephone_mu_law: bool = True  # telephone rows are also 8-bit mu-law coded (G.711)
    gain_db: float = 6.0  # gain uniform in [-gain_db, +gain_db] dB, then clipped to [-1, 1]; 0 = none


@dataclass
class CompressorConfig:
    """CTC compressor: an acoustic backbone + Transformer layers + CTC head(s)."""

    # scratch: the paper's 2 stride-2 Conv2D on Kaldi fbank (4x subsampling, 40 ms a frame), all
    # trained | whisper-base: the pretrained Whisper-base encoder (from PyPI wheels) on Whisper's
    # log-mel, 20 ms a frame, frozen below its top backbone_trainable_layers (models/backbones.py)
    backbone: str = "scratch"
    backbone_layers: int = 0  # whisper-base: use its first N layers (0 = all 6); the rest dropped
    backbone_trainable_layers: int = 0  # whisper-base: its top used layers trained with the CTC layers
    # whisper-base: the trained Whisper layers' learning rate, a fraction of train.lr (pretrained
    # weights move less than the fresh head; docs/design.md "A pretrained ear")
    backbone_lr_scale: float = 0.1
    backbone_stack: int = 2  # whisper-base: frames stacked before the CTC layers (2: 25/s, 1: 50/s)
    conv_channels: int = 32  # scratch backbone; sized for the 2-core demo; configs/paper.yaml has a larger model
    d_model: int = 192
    n_heads: int = 4
    n_layers: int = 4
    ff_dim: int = 768
    dropout: float = 0.1
    # CTC labels: chars (one label per character of the normalised transcript: learns ~2x faster
    # than tokens in the demo budget, compresses less; docs/design.md, "A front end that learns")
    # | sentencepiece (a unigram model of vocab_size pieces) | llm_tokens (an LLM's own tokens
    # seen in the transcripts, from label_llm; joint CTC/LLM decoding needs the stage-2 LLM's)
    labels: str = "chars"
    # the LLM whose tokens are the llm_tokens labels: a shipped name or a folder; "" = llm.path.
    # SmolLM2's 49k byte-level pieces are short enough for CTC to learn, Gemma's 262k (whole
    # words) are not (docs/design.md). Another LLM than stage 2's is mapped into its embedding
    # space by each label's text (the piece prior). Resolved to a folder in training.
    label_llm: str = "smollm2"
    vocab_size: int = 1000  # labels incl. <blank>=0 and <unk>; resolved from the data for llm_tokens
    char_layer: int = 2  # auxiliary character CTC on this layer's output; 0 = none
    char_weight: float = 0.5  # its share of the stage-1 loss
    char_vocab_size: int = 0  # resolved from the training transcripts


@dataclass
class LLMConfig:
    """The frozen text LLM and its LoRA adapters (stage 2)."""

    # a shipped LLM's short name (gemma3-270m | smollm2; models/shipped.py, converted once into
    # the cache) or a local Hugging Face folder of a supported family (models/llm_family.py)
    path: str = "gemma3-270m"
    weights_hash: str = ""  # sha256 of the base weights, filled in at training time and checked on load
    lora_rank: int = 2  # 0 = no LoRA (the LLM stays exactly as it is)
    lora_alpha: float = 0.0  # 0 = equal to the rank (scaling 1)
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    attn_implementation: str = "sdpa"  # transformers attention: sdpa | eager
    system_prompt: str = "You transcribe and translate speech."  # short: the default one costs ~20 tokens
    init: str = "pretrained"  # pretrained: frozen + LoRA | scratch: a small LLaMA trained fully
    scratch_hidden: int = 256  # sizes of the from-scratch LLaMA (llm.init=scratch)
    scratch_layers: int = 4
    scratch_heads: int = 4
    scratch_ff: int = 1024
    scratch_vocab: int = 1000  # its sentencepiece-unigram vocabulary, trained on the target texts


@dataclass
class SpeechLLMConfig:
    """Stage 2: compressed audio -> audio encoder -> LLM embedding space."""

    system: str = "decoder_only"  # decoder_only (Speech-LLaMA; llm.init picks pretrained or scratch)
    #                               | encoder_decoder (the seq2seq baseline, sizes in `seq2seq`)
    compressor: str = ""  # stage-1 checkpoint folder (its weights are copied into stage-2 checkpoints)
    compression: str = "average"  # average | remove_blank | none
    # what one compressed vector covers: labels (a run of one greedy CTC label: the paper's) |
    # llm_tokens (the frames of one LLM token of the compressor's greedy transcript, re-tokenised
    # by the LLM; with the piece prior each vector starts as that token's embedding: step 0 reads
    # the transcript; character or sentencepiece CTC labels; models/token_spans.py)
    spans: str = "labels"
    audio_mask: str = "non_causal"  # non_causal (audio block bidirectional) | causal
    freeze_compressor: bool = True
    # experimental (docs/design.md): RMS-normalise audio vectors to the token embeddings' RMS
    match_embedding_scale: bool = False
    # the piece prior (docs/design.md): each audio vector starts as the LLM's embedding of the
    # compressor's greedy CTC label, plus a gated learned correction
    piece_prior: bool = True
    encoder_dim: int = 256
    encoder_layers: int = 4
    encoder_heads: int = 4
    encoder_ff: int = 1024
    dropout: float = 0.1
    # ASR target text: normalized (text.normalize: lower case, no punctuation, each word in its
    # word-initial LLM tokens, so a transcript is the very token sequence the compressor's LLM-token
    # labels spell, and can be decoded jointly with CTC; docs/design.md) | verbatim (the manifest's
    # transcript, with its case and punctuation)
    asr_target: str = "normalized"
    unnamed_language_prob: float = 0.2  # share of training prompts that do not name the source language
    max_target_tokens: int = 96  # longer targets are skipped (counted) in training
    zero_audio: bool = False  # control experiment: the LLM gets zeros in place of the audio
    # the LLM's output head in training and decoding: targets (only the tokens of the training
    # targets, EOS and the byte tokens: Gemma's head has 262,144 rows; docs/design.md) | full
    output_vocab: str = "targets"


@dataclass
class Seq2SeqConfig:
    """The encoder-decoder baseline: the compressor's conv front end and layers (fresh weights)
    plus ``extra_encoder_layers``, and a Transformer decoder with cross-attention. Its output
    tokenizer is the from-scratch one (``llm.scratch_vocab``)."""

    # defaults: the decoder-only-from-scratch system (llm.scratch_*) has ~60% of these parameters,
    # as in the paper's comparison (tests/test_experiment.py checks the ratio)
    extra_encoder_layers: int = 4
    decoder_dim: int = 384
    decoder_layers: int = 5
    decoder_heads: int = 4
    decoder_ff: int = 1536
    dropout: float = 0.1


@dataclass
class CorpusConfig:
    """The demo corpus (``speechllama data demo``, ``speechllama demo``) and its voice sources.

    Every source reads the same human-translated Fish Fillets lines and num2words numbers, split
    by content key (``split_of``), so no test line is ever heard in training, in any voice."""

    langs: list[str] = field(default_factory=lambda: ["de", "fr", "es", "it", "nl", "cs"])
    sentences_per_lang: int = 0  # translated game lines per language (seeded sample); 0 = all
    numbers_per_lang: int = 300  # num2words expressions per language
    espeak: bool = True  # espeak-ng: ~80 voice variants x speeds x pitches, every line once
    # Kokoro-82M (neural, ~2x real time a thread): training lines per language, spoken by its
    # training voices; 0 keeps Kokoro an unseen source (the default: the demo's time budget)
    kokoro_per_lang: int = 0
    # the unseen-voice held-out set: test-split lines per language spoken by Kokoro voices that
    # training never uses (heldout-kokoro.jsonl); 0 = none
    kokoro_heldout_per_lang: int = 8
    # human voice acting (Debian fillets-ng-data-cs/-nl): its train and dev splits join the
    # corpus, its test split is the real-speech held-out set (heldout-real.jsonl)
    real_speech: list[str] = field(default_factory=lambda: ["cs", "nl"])
    seed: int = 0  # voices, speeds, samples


@dataclass
class DataConfig:
    train: str = ""  # training manifest (JSONL)
    dev: str = ""  # dev manifest; empty = no validation
    max_frames: int = 3000  # cap on padded feature frames per batch (batch size x longest row;
    #                       fbank: 100 a second, whisper-base features: 50)
    max_seconds: float = 20.0  # longer utterances are skipped (counted) in training
    # train on a seeded sample of the training recordings of at most this many hours (both stages
    # draw the same sample, so they share one feature cache); 0 = every recording
    max_hours: float = 0.0
    # DataLoader worker processes that build batches (augmentation, fbank, padding) while the
    # model trains; 0 = in the training process. Batches are pinned for CUDA.
    num_workers: int = 0


@dataclass
class TrainConfig:
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 150
    max_steps: int = 2000
    grad_clip: float = 5.0
    bf16: bool = False  # bf16 autocast for the forward pass (CPU and CUDA)
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # older step-* folders are deleted; the latest is always kept
    max_minutes: float = 0.0  # stop (and checkpoint) after this wall time; 0 = no limit
    # where the model, batches and loss live: auto (CUDA when available, cuda:LOCAL_RANK under
    # torchrun) | cpu | cuda (an error without a CUDA device)
    device: str = "auto"
    # several processes (torchrun): ddp (every rank holds the whole model) | fsdp (FSDP2: the
    # LLM's decoder layers and the whole model sharded; docs/scale.md)
    parallel: str = "ddp"
    grad_accum: int = 1  # micro-batches per optimizer step (no gradient sync on the inner ones)
    activation_checkpointing: bool = False  # recompute the LLM layers' activations in backward


@dataclass
class ExperimentConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    speech_llm: SpeechLLMConfig = field(default_factory=SpeechLLMConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    seq2seq: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)


CHOICES = {  # string fields with a closed set of values
    "compressor.labels": ("llm_tokens", "sentencepiece", "chars"),
    "compressor.backbone": ("scratch", "whisper-base"),
    "speech_llm.compression": ("average", "remove_blank", "none"),
    "speech_llm.spans": ("labels", "llm_tokens"),
    "speech_llm.audio_mask": ("non_causal", "causal"),
    "speech_llm.asr_target": ("verbatim", "normalized"),
    "speech_llm.output_vocab": ("targets", "full"),
    "llm.init": ("pretrained", "scratch"),
    "llm.attn_implementation": ("sdpa", "eager"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.parallel": ("ddp", "fsdp"),
    "speech_llm.system": ("decoder_only", "encoder_decoder"),
    "augment.noise_kinds": ("white", "pink", "babble"),  # a list: each item is checked
}


def _check_choices(cfg: Any) -> None:
    data = to_dict(cfg)
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        if section not in data:
            continue
        value = data[section][name]
        for item in value if isinstance(value, list) else [value]:
            if item not in allowed:
                raise ConfigError(f"config key '{key}': {item!r} is not one of {allowed}")


def _check_augment(a: AugmentConfig) -> None:
    """Ranges of the augmentation fields (types are checked on load)."""
    for name in ("prob", "noise_prob", "telephone_prob"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            raise ConfigError(f"config key 'augment.{name}': {getattr(a, name)!r} is not in [0, 1]")
    if not a.speeds or not all(0.5 <= s <= 2.0 for s in a.speeds):
        raise ConfigError(f"config key 'augment.speeds': {a.speeds!r} must be a non-empty list of "
                          f"factors in [0.5, 2]")
    if a.snr_min > a.snr_max:
        raise ConfigError(f"config key 'augment.snr_min': {a.snr_min} is above augment.snr_max "
                          f"({a.snr_max})")
    if a.noise_prob > 0 and not a.noise_kinds:
        raise ConfigError("config key 'augment.noise_kinds': empty while augment.noise_prob > 0")
    if a.gain_db < 0:
        raise ConfigError(f"config key 'augment.gain_db': {a.gain_db} must be >= 0")


def _check_type(value: Any, tp: Any, key: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [v if item_tp is Any else _check_type(v, item_tp, key) for v in value]
        return list(items) if origin is list else tuple(items)
    return value


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(
                f"unknown config key '{prefix}{key}' (known: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _from_dict(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, tp, prefix + key)
    return cls(**kwargs)


def from_dict(data: dict, cls: type = ExperimentConfig) -> Any:
    cfg = _from_dict(cls, data or {})
    _check_choices(cfg)
    if isinstance(cfg, ExperimentConfig):
        _check_augment(cfg.augment)
        for key in ("train.grad_accum", "data.max_frames"):
            section, name = key.split(".")
            if getattr(getattr(cfg, section), name) < 1:
                raise ConfigError(f"config key '{key}': must be >= 1")
        if cfg.speech_llm.spans == "llm_tokens" and cfg.speech_llm.compression == "none":
            raise ConfigError("config key 'speech_llm.spans': llm_tokens needs speech_llm.compression "
                              "average or remove_blank, not none")
        if cfg.speech_llm.spans == "llm_tokens" and cfg.compressor.labels == "llm_tokens":
            raise ConfigError("config key 'speech_llm.spans': llm_tokens needs character or "
                              "sentencepiece CTC labels (compressor.labels=llm_tokens already are "
                              "LLM tokens: use speech_llm.spans=labels)")
        if cfg.data.num_workers < 0:
            raise ConfigError("config key 'data.num_workers': must be >= 0")
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of ``cfg`` with ``section.key=value`` overrides (values parsed as YAML)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        path, raw = item.split("=", 1)
        *parents, leaf = path.strip().split(".")
        node = data
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown config key '{path}'")
            node = node[p]
        if leaf not in node or isinstance(node[leaf], dict):
            raise ConfigError(f"unknown config key '{path}'")
        node[leaf] = yaml.safe_load(raw) if raw != "" else ""
    return from_dict(data, type(cfg))


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        cfg = from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return apply_overrides(cfg, list(overrides))


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
