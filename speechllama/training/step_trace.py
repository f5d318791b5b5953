"""One stage-2 training step on fake tensors: its activation memory and FLOP, with no weights and
no arithmetic (for :mod:`speechllama.training.plan`).

A model built on the meta device gets fake CPU tensors (``FakeTensorMode``: shapes and dtypes,
no storage), is prepared as the training loop prepares it (:func:`speechllama.training.parallel.parallelize`:
activation checkpointing), and runs forward + backward on a batch of a given shape under torch's
``MemTracker`` (torch.distributed._tools: every tensor's storage, by kind, and the peak) and,
in a second trace, ``FlopCounterMode``. A trace of LLaMA-7B takes ~3 s; tests/test_plan.py holds
the estimate against the peak a real step measures on the CPU.

Shape legend: B rows per batch, T fbank frames per row, T' after 4x subsampling, S audio vectors
after CTC compression, P prompt tokens, N target tokens (eos included), L = P + S + N positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..config import ExperimentConfig


@dataclass(frozen=True)
class BatchShape:
    """One micro-batch on one GPU, every row full (the longest rows are the worst case)."""

    rows: int  # B
    frames: int  # T, fbank frames per row
    subsampled: int  # T'
    audio: int  # S
    before: int  # prompt tokens before the audio
    after: int  # prompt tokens after it
    targets: int  # N, eos included
    ratio: float  # T' / S assumed

    @property
    def positions(self) -> int:  # L
        return self.before + self.audio + self.after + self.targets


@dataclass(frozen=True)
class Trace:
    activations: int  # bytes at the step's peak beyond weights and gradients
    flop: int  # forward + backward of one micro-batch


def fake_tensors(model: nn.Module, mode) -> nn.Module:
    """Replace every (meta) parameter and buffer of ``model`` by a fake CPU tensor of ``mode``
    with its shape, dtype and requires_grad; tied weights stay tied."""
    new: dict[int, torch.Tensor] = {}
    with mode:
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for name, t in table.items():
                    if t is not None and id(t) not in new:
                        fake = torch.empty(t.shape, dtype=t.dtype)
                        is_param = isinstance(t, nn.Parameter)
                        new[id(t)] = nn.Parameter(fake, t.requires_grad) if is_param else fake
                    if t is not None:
                        table[name] = new[id(t)]
    return model


def prepare(model: nn.Module, cfg: ExperimentConfig, checkpointing: bool,
            device: torch.device) -> nn.Module:
    """What the training loop does to the model of one process before its first step
    (:func:`speechllama.training.parallel.parallelize`, world size 1): placement on ``device`` (the meta
    device: nothing moves) and activation checkpointing of the LLM's layers if ``checkpointing``."""
    from .parallel import parallelize

    tc = replace(cfg.train, activation_checkpointing=checkpointing, parallel="ddp")
    return parallelize(model, tc, device, world=1)


def step_loss(model: nn.Module, shape: BatchShape, n_mels: int) -> torch.Tensor:
    """SpeechLLM.forward on a batch of ``shape`` (no padding), with CTC compression replaced by
    keeping S of the T' vectors: the same output size (the real S depends on the data)."""
    from ..models.llm import audio_text_mask
    from ..models.speech_llm import IGNORE, next_token_loss

    b, s = shape.rows, shape
    feats = torch.randn(b, s.frames, n_mels)  # (B, T, F)
    with torch.set_grad_enabled(not model.freeze_compressor):
        hidden, logits, _ = model.compressor(feats, torch.full((b,), s.frames))  # (B, T', C)
        compressed = hidden[:, : s.audio].clone()  # (B, S, C)
        labels = logits[:, : s.audio].argmax(-1) if model.encoder.piece_embeds is not None else None
    audio = model.encoder(compressed, torch.full((b,), s.audio), labels)  # (B, S, H)
    text = torch.zeros(b, s.before + s.after + s.targets, dtype=torch.long)
    t = model.llm.get_input_embeddings()(text).to(audio.dtype)  # (B, P + N, H)
    embeds = torch.cat([t[:, : s.before], audio, t[:, s.before:]], dim=1)  # (B, L, H)
    valid = torch.ones(b, s.positions, dtype=torch.bool)
    mask = audio_text_mask(torch.full((b,), s.before), torch.full((b,), s.audio), valid,
                           model.causal_audio)  # (B, 1, L, L)
    target_labels = torch.full((b, s.positions), IGNORE)
    target_labels[:, -s.targets:] = 0
    return next_token_loss(model.llm, embeds, mask, valid, target_labels, [[0] * s.targets] * b)


def _memtracker():
    """torch's MemTracker with two changes through its private hooks (torch 2.13): frozen
    parameters get no gradient hook (it registers one on every parameter, which fails on a
    parameter that needs no gradient), and only the global peak is kept (its per-module peaks
    cost a pass over every module at every op: 40 s instead of 3 s for LLaMA-7B)."""
    from torch.distributed._tools import mem_tracker

    class _NoHook:
        def remove(self) -> None:
            pass

    class Tracker(mem_tracker.MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            for p in module.parameters():
                if not p.requires_grad and p not in self._param_to_grad_hook_handles:
                    self._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[mem_tracker._TOTAL_KEY]:
                    self._peak_mem[dev] = snap[mem_tracker._TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(snap)

    return Tracker()


def _flop_counter():
    """FlopCounterMode, also counting the flash-attention kernel sdpa runs on the CPU (torch
    counts its CUDA kernels only)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, q, k, v)

    return fc.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})


def _run_step(build: Callable[[], nn.Module], cfg: ExperimentConfig, shape: BatchShape,
              checkpointing: bool, counter) -> None:
    """A training step of a fresh fake model from ``build`` under the dispatch mode ``counter``."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = prepare(build(), cfg, checkpointing, torch.device("meta"))
    mode = FakeTensorMode()
    fake_tensors(model, mode).train()
    with mode, counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.bf16):  # as train.fit
            loss = step_loss(model, shape, model.compressor.backbone.feature_dim)
        loss.backward()


def trace_step(build: Callable[[], nn.Module], cfg: ExperimentConfig, shape: BatchShape,
               checkpointing: bool) -> Trace:
    """Activations and FLOP of one training step of the meta SpeechLLM that ``build`` returns:
    MemTracker's peak during forward + backward less the weights and gradients held at that
    moment (they are counted from the parameters), and FlopCounterMode's total, in a trace of its
    own (it keeps tensors alive: 1.3 GiB of recomputed ones for LLaMA-7B with checkpointing)."""
    from torch.distributed._tools.mem_tracker import _MemRefType

    tracker, flops = _memtracker(), _flop_counter()
    _run_step(build, cfg, shape, checkpointing, tracker)
    _run_step(build, cfg, shape, checkpointing, flops)
    (peak,) = tracker.get_tracker_snapshot("peak").values()  # one device: cpu
    held = sum(peak.get(k, 0) for k in (_MemRefType.PARAM, _MemRefType.BUFFER, _MemRefType.GRAD))
    return Trace(peak["Total"] - held, int(flops.get_total_flops()))
