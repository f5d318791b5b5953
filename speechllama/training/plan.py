"""A plan before the run (``speechllama plan``): parameters, memory per GPU and FLOP per step of a
stage-2 config, without reading any weights.

The model is built on the meta device: the LLM from its folder's config.json alone
(:func:`speechllama.models.llm.llm_from_config`, LoRA as training adds it), the compressor and
the audio encoder from the config. Parameter counts and the bytes of weights, gradients and AdamW
state come from that model; activations and FLOP from one training step of it at full depth,
traced on fake tensors with torch's MemTracker and FlopCounterMode (:mod:`.step_trace`).
Sharding is arithmetic on top (DDP, or FSDP2 as :func:`speechllama.training.parallel.parallelize` applies
it). docs/scale.md shows the output and what it assumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ExperimentConfig
from ..errors import MissingFileError, UsageError
from .step_trace import BatchShape, Trace, trace_step

# T' / S of CTC compression. Subword labels (llm_tokens, sentencepiece): measured on the demo
# corpus (docs/bench.md: average keeps 22% of the frames, remove_blank 11%). Characters
# (docs/design.md): remove_blank keeps ~60%, average "barely shortens": taken as 1x, the longest.
COMPRESSION_RATIO = {"chars": {"average": 1.0, "remove_blank": 1.7, "none": 1.0},
                     "subwords": {"average": 4.5, "remove_blank": 9.0, "none": 1.0}}
TARGET_TOKENS_PER_SECOND = 6.0  # LLM tokens a second of speech (5.6 on the demo, docs/design.md)
PROMPT_TOKENS = 32  # when the LLM folder has no tokenizer to count the prompt with
FIT_FRACTION = 0.9  # of a GPU's memory a plan may fill; the rest: CUDA context, fragmentation
GIB = 2**30


@dataclass(frozen=True)
class Part:
    name: str
    params: int
    trainable: int
    bytes: int  # parameters and buffers, in the dtypes training holds them
    dtype: str


@dataclass(frozen=True)
class Plan:
    config: str
    llm: str  # one line about the LLM
    parts: list[Part]
    shape: BatchShape
    notes: list[str]  # where the shape's numbers come from
    gpus: int
    gpu_memory: float  # GiB per GPU
    parallel: str  # ddp | fsdp
    grad_accum: int
    checkpointing: bool  # train.activation_checkpointing
    traces: dict[bool, Trace]  # by activation checkpointing
    fsdp_unsharded: int  # bytes an FSDP rank all-gathers at once: the root unit + 2 layers

    @property
    def trainable_bytes(self) -> int:
        return sum(4 * p.trainable for p in self.parts)  # fp32

    def per_gpu(self, checkpointing: bool) -> dict[str, int]:
        """Bytes per GPU: weights, grads, adamw, activations, total."""
        n = self.gpus
        weights = sum(p.bytes for p in self.parts)
        grads, adamw = self.trainable_bytes, 2 * self.trainable_bytes
        if self.parallel == "fsdp":
            weights = math.ceil(weights / n) + (self.fsdp_unsharded if n > 1 else 0)
            # accumulating micro-batches without a reduce-scatter keeps whole gradients too
            grads = math.ceil(grads / n) + (grads if n > 1 and self.grad_accum > 1 else 0)
            adamw = math.ceil(adamw / n)
        elif n > 1:
            grads *= 2  # DDP's gradient buckets hold a copy of every gradient
        out = {"weights": weights, "grads": grads, "adamw": adamw,
               "activations": self.traces[checkpointing].activations}
        out["total"] = sum(out.values())
        return out

    def fits(self, checkpointing: bool) -> bool:
        return self.per_gpu(checkpointing)["total"] <= FIT_FRACTION * self.gpu_memory * GIB


# ---------------------------------------------------------------------------------------------
# The model on the meta device
# ---------------------------------------------------------------------------------------------


def llm_config(cfg: ExperimentConfig):
    """(folder, transformers config) of ``llm.path``: only its config.json is read."""
    from transformers import AutoConfig

    from ..models.llm_family import family_of
    from ..models.shipped import resolve_llm

    if cfg.speech_llm.system != "decoder_only" or cfg.llm.init != "pretrained":
        raise UsageError("speechllama plan covers the Speech-LLaMA system on a pretrained LLM "
                         "(speech_llm.system=decoder_only, llm.init=pretrained)")
    path = resolve_llm(cfg.llm.path)
    if not (path / "config.json").is_file():
        raise MissingFileError(f"{path}: not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    family_of(config)
    return path, config


def meta_speech_llm(cfg: ExperimentConfig, config) -> nn.Module:
    """The stage-2 SpeechLLM of ``cfg`` as training builds it (models/build.py), every tensor on
    the meta device; no restricted output vocabulary (the full head: an upper bound)."""
    from ..models.build import build_audio_encoder, build_compressor
    from ..models.llm import llm_from_config
    from ..models.speech_llm import SpeechLLM

    s, lc = cfg.speech_llm, cfg.llm
    llm = llm_from_config(config, lc.lora_rank, lc.lora_alpha or None, tuple(lc.lora_targets),
                          dtype=torch.bfloat16 if cfg.train.bf16 else torch.float32,
                          attn_implementation=lc.attn_implementation)
    with torch.device("meta"):
        compressor = build_compressor(cfg)
        prior = torch.empty(cfg.compressor.vocab_size, config.hidden_size) \
            if s.piece_prior and s.spans == "labels" else None
        out_rms = 1.0 if s.match_embedding_scale or s.piece_prior else 0.0  # > 0: a norm layer
        encoder = build_audio_encoder(cfg, config.hidden_size, prior, out_rms)
    return SpeechLLM(compressor, encoder, llm, s.compression, s.audio_mask == "causal",
                     s.freeze_compressor, s.zero_audio)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _dtypes(tensors) -> str:
    names = {str(t.dtype).removeprefix("torch.").replace("float", "fp").replace("bfp16", "bf16")
             for t in tensors}
    return "+".join(sorted(names))


def count_parts(model: nn.Module, lora_rank: int) -> list[Part]:
    """Rows: compressor, audio encoder, LLM base (frozen), LoRA (trainable)."""
    parts = []
    for name, module in (("compressor", model.compressor), ("audio encoder", model.encoder)):
        params = list(module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        parts.append(Part(name, sum(p.numel() for p in params), trainable,
                          _bytes(params) + _bytes(module.buffers()), _dtypes(params)))
    base = [p for p in model.llm.parameters() if not p.requires_grad]
    lora = [p for p in model.llm.parameters() if p.requires_grad]
    parts.append(Part("LLM base", sum(p.numel() for p in base), 0,
                      _bytes(base) + _bytes(model.llm.buffers()), _dtypes(base)))
    if lora:
        n = sum(p.numel() for p in lora)
        parts.append(Part(f"LoRA (rank {lora_rank})", n, n, _bytes(lora), _dtypes(lora)))
    return parts


def fsdp_unsharded_bytes(model: nn.Module, bf16: bool) -> int:
    """What one FSDP2 rank holds unsharded at once with train.parallel=fsdp (each decoder layer
    and the whole model are units; train.parallelize): the root unit (everything outside the
    layers, kept through the step) and two decoder layers (one running, one prefetched), in
    bf16 with train.bf16 (the mixed-precision policy all-gathers in bf16)."""
    def size(params) -> int:
        return sum(p.numel() * (2 if bf16 else p.element_size()) for p in params)

    layers = model.llm.get_decoder().layers
    in_layers = {id(p) for p in layers.parameters()}
    root = size(p for p in model.parameters() if id(p) not in in_layers)
    return root + 2 * max(size(layer.parameters()) for layer in layers)


# ---------------------------------------------------------------------------------------------
# The batch shape
# ---------------------------------------------------------------------------------------------


def prompt_lengths(cfg: ExperimentConfig, folder: Path) -> tuple[int, int, str]:
    """(before, after, source): the prompt tokens around the audio, the longest of the ST and ASR
    prompts, counted with the LLM's tokenizer (models/prompt.py), else assumed."""
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        before = PROMPT_TOKENS * 3 // 4
        return before, PROMPT_TOKENS - before, "assumed: no tokenizer in the LLM folder"
    from transformers import AutoTokenizer

    from ..models.prompt import Prompter

    prompter = Prompter(AutoTokenizer.from_pretrained(folder, local_files_only=True),
                        cfg.llm.system_prompt)
    before, after = max((prompter("st", "de", "en"), prompter("asr", "de", "de")),
                        key=lambda p: len(p[0]) + len(p[1]))
    return len(before), len(after), "counted with the LLM's tokenizer"


def batch_shape(cfg: ExperimentConfig, prompt: tuple[int, int], seconds: float | None = None,
                ratio: float | None = None) -> tuple[BatchShape, list[str]]:
    """The micro-batch of rows ``seconds`` long (default data.max_seconds: the longest the loader
    admits), as many as data.max_frames holds, and notes on where each number comes from."""
    from ..models.build import build_backbone

    with torch.device("meta"):  # its frame arithmetic only; no weight is read
        backbone = build_backbone(cfg)
    rate = backbone.feature_rate  # feature frames per second (fbank 100, Whisper 50)
    seconds = cfg.data.max_seconds if seconds is None else seconds
    frames = max(1, min(round(seconds * rate), cfg.data.max_frames))
    rows = cfg.data.max_frames // frames
    sub = int(backbone.out_lengths(torch.tensor(frames)))
    labels = "chars" if cfg.compressor.labels == "chars" else "subwords"  # what compresses
    mode = cfg.speech_llm.compression
    source = "given" if ratio is not None else f"{mode} over {labels[:-1]} CTC labels"
    ratio = COMPRESSION_RATIO[labels][mode] if ratio is None else ratio
    targets = min(cfg.speech_llm.max_target_tokens,
                  math.ceil(TARGET_TOKENS_PER_SECOND * frames / rate) + 1)
    shape = BatchShape(rows, frames, sub, max(1, round(sub / ratio)), prompt[0], prompt[1],
                       targets, ratio)
    notes = [f"rows of {frames / rate:g} s ({frames} {backbone.key} frames; "
             f"{'--seconds' if seconds != cfg.data.max_seconds else 'data.max_seconds'}), "
             f"{rows} of them in data.max_frames={cfg.data.max_frames}",
             f"CTC compression {ratio:g}x ({source}; --compression-ratio)",
             f"targets: {TARGET_TOKENS_PER_SECOND:g} LLM tokens per second of speech + eos, "
             f"at most speech_llm.max_target_tokens={cfg.speech_llm.max_target_tokens}"]
    return shape, notes


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


def make_plan(cfg: ExperimentConfig, config_name: str = "", gpus: int = 1,
              gpu_memory: float = 80.0, parallel: str | None = None,
              seconds: float | None = None, ratio: float | None = None) -> Plan:
    """The plan of ``cfg`` on ``gpus`` GPUs of ``gpu_memory`` GiB each (``parallel``: ddp | fsdp,
    default train.parallel); ``seconds`` per row and the compression ``ratio`` override the
    assumed batch shape."""
    parallel = parallel or cfg.train.parallel
    if parallel not in ("ddp", "fsdp"):
        raise UsageError(f"parallel must be ddp or fsdp, got {parallel!r}")
    if gpus < 1 or gpu_memory <= 0 or (seconds is not None and seconds <= 0) or (
            ratio is not None and ratio < 1):
        raise UsageError("--gpus must be >= 1, --gpu-memory and --seconds > 0, "
                         "--compression-ratio >= 1")
    folder, config = llm_config(cfg)
    model = meta_speech_llm(cfg, config)
    before, after, prompt_source = prompt_lengths(cfg, folder)
    shape, notes = batch_shape(cfg, (before, after), seconds, ratio)
    notes.append(f"prompt: {before + after} tokens ({prompt_source})")
    weights = "weights present" if any(folder.glob("*.safetensors")) else "config.json only"
    size = sum(p.numel() for p in model.llm.parameters())
    lora = " with LoRA" if cfg.llm.lora_rank else ""
    llm = (f"{cfg.llm.path} ({config.model_type}: {config.num_hidden_layers} layers, hidden "
           f"{config.hidden_size}, vocab {config.vocab_size:,}; {size:,} parameters{lora}; "
           f"{weights})")
    traces = {ac: trace_step(lambda: meta_speech_llm(cfg, config), cfg, shape, ac)
              for ac in (False, True)}
    return Plan(config_name, llm, count_parts(model, cfg.llm.lora_rank), shape, notes, gpus,
                gpu_memory, parallel, cfg.train.grad_accum, cfg.train.activation_checkpointing,
                traces, fsdp_unsharded_bytes(model, cfg.train.bf16))


def _size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_plan(plan: Plan) -> str:
    """The plan as text: the parts, the batch and FLOP, the assumptions, memory per GPU with and
    without activation checkpointing, and last the verdict."""
    s, n = plan.shape, plan.gpus
    lines = [f"speechllama plan {plan.config}: {n} GPU{'s' if n > 1 else ''} x "
             f"{plan.gpu_memory:g} GiB, {plan.parallel}", f"LLM: {plan.llm}", "",
             f"{'part':<16}{'parameters':>16}{'trainable':>14}  {'dtype':<10}{'bytes':>12}"]
    for p in plan.parts:
        lines.append(f"{p.name:<16}{p.params:>16,}{p.trainable:>14,}  {p.dtype:<10}"
                     f"{_size(p.bytes):>12}")
    total = sum(p.params for p in plan.parts)
    lines += [f"{'total':<16}{total:>16,}{sum(p.trainable for p in plan.parts):>14,}  {'':<10}"
              f"{_size(sum(p.bytes for p in plan.parts)):>12}", "",
              f"micro-batch per GPU: {s.rows} rows x {s.frames} feature frames -> {s.subsampled} "
              f"subsampled -> {s.audio} audio vectors; + {s.before + s.after} prompt + "
              f"{s.targets} target tokens = {s.positions} LLM positions a row"]
    per_step = n * plan.grad_accum
    flop = plan.traces[False].flop
    per_param = flop / (s.rows * s.positions * sum(p.params for p in plan.parts))
    lines += [f"per optimizer step ({n} GPU{'s' if n > 1 else ''} x {plan.grad_accum} micro-batch, "
              f"train.grad_accum): {per_step * s.rows * s.positions:,} LLM positions "
              f"({per_step * s.rows * s.targets:,} target tokens)",
              f"FLOP per optimizer step, forward+backward: {per_step * flop:.3g} "
              f"({per_step * plan.traces[True].flop:.3g} with activation checkpointing); "
              f"{per_param:.1f} per parameter and LLM position"]
    lines += ["", "assumptions:", *[f"- {a}" for a in _assumptions(plan)], "",
              f"{'per GPU':<28}{'weights':>11}{'grads':>11}{'AdamW':>11}{'activations':>13}"
              f"{'total':>11}  fits in {plan.gpu_memory:g} GiB"]
    for ac in (False, True):
        m = plan.per_gpu(ac)
        mark = " *" if ac == plan.checkpointing else ""
        name = f"{'with' if ac else 'without'} act. checkpt{mark}"
        sizes = "".join(f"{_size(m[k]):>11}" for k in ("weights", "grads", "adamw"))
        lines.append(f"{name:<28}{sizes}{_size(m['activations']):>13}{_size(m['total']):>11}  "
                     f"{'yes' if plan.fits(ac) else 'no'}")
    lines += ["", _verdict(plan)]
    return "\n".join(lines)


def _verdict(plan: Plan) -> str:
    where = f"{plan.gpus} x {plan.gpu_memory:g} GiB with {plan.parallel}"
    key = "train.activation_checkpointing"
    if plan.fits(plan.checkpointing):
        return f"fits on {where} as configured (* = {key}={str(plan.checkpointing).lower()})"
    if plan.fits(not plan.checkpointing):
        return (f"does not fit on {where} as configured; fits with "
                f"{key}={str(not plan.checkpointing).lower()}")
    return f"does not fit on {where}, with or without activation checkpointing"


def _assumptions(plan: Plan) -> list[str]:
    fsdp = (f"fsdp: weights, gradients and AdamW state / {plan.gpus}, plus "
            f"{_size(plan.fsdp_unsharded)} all-gathered at once (the root unit: embeddings, head, "
            f"compressor, encoder; and two decoder layers, one running and one prefetched); with "
            f"train.grad_accum > 1, whole gradients too (accumulated before the reduce-scatter)")
    ddp = ("ddp: every GPU holds everything; with more than one GPU, gradient buckets double the "
           "gradients")
    return [
        "weights: the frozen LLM in bf16 with train.bf16, else fp32; compressor, audio encoder and "
        "LoRA in fp32 (as models/build.py builds them); gradients fp32 of the trainable "
        "parameters; AdamW: two fp32 moments per trainable parameter",
        fsdp if plan.parallel == "fsdp" else ddp,
        "activations: peak of one forward+backward beyond weights and gradients, traced with "
        "torch MemTracker on fake tensors (CPU kernels), the full output head over the target "
        "positions (speech_llm.output_vocab=targets needs less); activation checkpointing as "
        "train.parallelize turns it on (every LLM decoder layer)",
        *plan.notes,
        "FLOP: FlopCounterMode on the same trace (matmuls and attention); frozen weights get no "
        "weight gradient, so they cost ~4N per token instead of 6N",
        f"fits: total <= {FIT_FRACTION:.0%} of the GPU's memory (the rest: CUDA context, "
        "allocator fragmentation)",
    ]
