"""Acoustic backbones of the CTC compressor: what turns a wave into the frames its CTC layers read.

``compressor.backbone`` picks one:

- ``scratch`` (:class:`Conv2dSubsampling`, the paper's): Kaldi fbank (100 frames/s, 80 dims) ->
  two stride-2 Conv2D -> 25 frames/s. Every weight is trained; what can be cached per recording is
  the fbank.
- ``whisper-base`` (:class:`WhisperBackbone`): Whisper's own log-mel (100/s) -> the pretrained
  Whisper-base encoder (50/s, 512 dims), not padded to 30 s. The frozen part (every layer but the
  top ``compressor.backbone_trainable_layers``) is the feature extractor: training computes its
  output once per corpus and caches it (data/features.py); the trainable top layers, a frame
  stacking (``compressor.backbone_stack``: 1 = 50/s, 2 = 25/s) and a projection run in the model.

Every backbone has one interface: ``features(waves)`` (the cacheable part, no gradient),
``forward(feats, lengths)`` (the trained part), the length arithmetic between them, and the
constants that tie frames to time (``feature_rate``, ``frame_samples``). Shape legend: B batch,
T feature frames, T' output frames, D feature dims, C d_model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..audio import SAMPLE_RATE, fbank
from ..errors import UsageError

BACKBONES = ("scratch", "whisper-base")


class Conv2dSubsampling(nn.Module):
    """Two stride-2 Conv2D layers over (time, mel): 4x shorter in time, projected to d_model."""

    feature_rate = 100  # fbank frames per second (10 ms hop)
    stride = 4  # feature frames per output frame
    frame_samples = 640  # samples of one output frame at 16 kHz: 4 fbank frames of 10 ms
    key = "fbank"  # names its features in the feature cache

    def __init__(self, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=2)
        freq = ((n_mels - 3) // 2 + 1 - 3) // 2 + 1  # 80 mel bins -> 19
        self.proj = nn.Linear(channels * freq, d_model)
        self.feature_dim = n_mels

    @torch.no_grad()
    def features(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """16 kHz waves (N_i,) -> fbank (T_i, 80) each."""
        return [fbank(w) for w in waves]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fbank (B, T, F), lengths (B,) -> (B, T', C), lengths (B,)."""
        x = x.unsqueeze(1)  # (B, T, F) -> (B, 1, T, F)
        x = F.gelu(self.conv1(x))  # (B, c, T/2, F/2)
        x = F.gelu(self.conv2(x))  # (B, c, T', F/4)
        b, c, t, f = x.shape
        x = self.proj(x.transpose(1, 2).reshape(b, t, c * f))  # (B, T', C)
        # Scale up so the content, not the unit-amplitude position table added next, dominates at
        # the start of training (as token embeddings are scaled in the Transformer paper / ESPnet).
        return x * self.proj.out_features ** 0.5, subsampled_lengths(lengths).clamp(max=t)

    @staticmethod
    def out_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return subsampled_lengths(lengths)

    @staticmethod
    def min_features(n_out: int) -> int:
        return min_input_frames(n_out)


def _at_least(wave, n: int):
    """``wave`` zero-padded to ``n`` samples if shorter (the log-mel of a 25-ms window needs them)."""
    wave = torch.as_tensor(wave, dtype=torch.float32)
    return F.pad(wave, (0, n - len(wave))) if len(wave) < n else wave


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames left after two 3x3 stride-2 convolutions without padding: T -> ((T-3)//2+1 -3)//2+1."""
    once = torch.div(lengths - 3, 2, rounding_mode="floor") + 1
    return (torch.div(once - 3, 2, rounding_mode="floor") + 1).clamp(min=0)


def min_input_frames(n_out: int) -> int:
    """Fewest input frames that ``subsampled_lengths`` maps to >= n_out >= 1 frames."""
    return 4 * n_out + 3


class WhisperBackbone(nn.Module):
    """The pretrained Whisper-base encoder (``models/whisper.py``), frozen below its top
    ``trainable_layers`` layers; its output frames stacked ``stack`` at a time and projected to
    ``d_model``. Features (the frozen part's output) are (T, 512) at 50 frames/s."""

    feature_rate = 50  # Whisper encoder frames per second (its conv2 has stride 2 over 10 ms hops)
    max_seconds = 30.0  # Whisper's positional table: 1500 frames; longer waves are encoded in pieces
    # the frozen pass's autocast dtype (None: float32); bench/bench_whisper_features.py measures
    # both, the same in training's cache and at inference
    dtype: torch.dtype | None = None

    def __init__(self, encoder: nn.Module, trainable_layers: int, stack: int, d_model: int,
                 layers: int = 0, lr_scale: float = 1.0):
        super().__init__()
        n = len(encoder.layers)
        layers = layers or n  # the first ``layers`` layers are used; the rest are dropped
        if not 1 <= layers <= n:
            raise UsageError(f"compressor.backbone_layers={layers}: Whisper-base has {n} layers")
        if not 0 <= trainable_layers <= layers:
            raise UsageError(f"compressor.backbone_trainable_layers={trainable_layers}: "
                             f"the backbone uses {layers} layers")
        if stack < 1:
            raise UsageError(f"compressor.backbone_stack={stack}: must be >= 1")
        if not lr_scale > 0:
            raise UsageError(f"compressor.backbone_lr_scale={lr_scale}: must be > 0")
        encoder.layers = encoder.layers[:layers]
        self.final_norm = layers == n  # Whisper's last LayerNorm follows its last layer only
        self.encoder, self.frozen, self.stack = encoder, layers - trainable_layers, stack
        self.stride = stack  # feature frames per output frame
        self.feature_dim = encoder.config.d_model
        self.frame_samples = SAMPLE_RATE // self.feature_rate * stack  # 320 samples a frame at 50/s
        # the frozen depth names the features (the output of its first `frozen` layers)
        self.key = f"whisper-base-{self.frozen}of{n}"
        self.proj = nn.Linear(self.feature_dim * stack, d_model)
        encoder.requires_grad_(False)
        for layer in encoder.layers[self.frozen:]:
            layer.requires_grad_(True)
        encoder.layer_norm.requires_grad_(trainable_layers > 0 and self.final_norm)
        encoder.lr_scale = lr_scale  # the training loop's optimizer reads it (training/loop.py)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # Whisper's dropout stays off, trained top layers included
        return self

    @torch.no_grad()
    def features(self, waves: list[torch.Tensor], batch_seconds: float = 240.0) -> list[torch.Tensor]:
        """16 kHz waves (N_i,) -> the frozen part's output (T_i, 512) each, T_i = ceil(N_i / 320).

        Batched by length (about ``batch_seconds`` of audio a batch) with a key mask, so a wave's
        features never depend on its neighbours; a wave over 30 s is encoded in 30-s pieces."""
        from .whisper import encode, log_mel, pad_mels

        device = next(self.encoder.parameters()).device
        piece = int(self.max_seconds * SAMPLE_RATE)
        pieces = [(i, _at_least(w[s:s + piece], 400)) for i, w in enumerate(waves)
                  for s in range(0, max(len(w), 1), piece)]
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k][1]))
        out: list[torch.Tensor | None] = [None] * len(pieces)
        start = 0
        while start < len(order):
            stop = start + 1  # sorted by length: the batch's last piece is its longest
            while stop < len(order) and (stop - start + 1) * len(pieces[order[stop]][1]) <= batch_seconds * SAMPLE_RATE:
                stop += 1
            chunk = order[start:stop]
            mels = [log_mel(pieces[k][1].to(device)) for k in chunk]  # (T_k, 80) each
            mels, lengths = pad_mels(mels)  # (b, T, 80), (b,)
            top = self.final_norm and self.frozen == len(self.encoder.layers)
            with torch.autocast(device.type, dtype=self.dtype or torch.float32,
                                enabled=self.dtype is not None):
                hidden, n = encode(self.encoder, mels, lengths, n_layers=self.frozen, final_norm=top)
            for row, k in enumerate(chunk):
                out[k] = hidden[row, : n[row]].float().cpu()  # (T2_k, 512)
            start = stop
        feats: list[list[torch.Tensor]] = [[] for _ in waves]
        for (i, _), f in zip(pieces, out):
            feats[i].append(f)
        return [torch.cat(f) for f in feats]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, 512), lengths (B,) -> (B, T', C), lengths (B,); T' = ceil(T / stack)."""
        if self.frozen < len(self.encoder.layers):
            from .whisper import run_layers

            x = run_layers(self.encoder, x, lengths, self.frozen, len(self.encoder.layers))
            if self.final_norm:
                x = self.encoder.layer_norm(x)  # (B, T, 512)
        b, t, d = x.shape
        s = self.stack
        x = F.pad(x, (0, 0, 0, (-t) % s))  # (B, s * T', 512)
        x = self.proj(x.reshape(b, -1, d * s))  # (B, T', C)
        # scaled as the scratch front end's, above the position table the CTC layers add
        return x * self.proj.out_features ** 0.5, self.out_lengths(lengths)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + self.stack - 1, self.stack, rounding_mode="floor")

    def min_features(self, n_out: int) -> int:
        return n_out * self.stack
