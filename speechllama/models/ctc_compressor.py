"""CTC compressor: fbank -> 4x-subsampled hidden states + CTC logits -> shorter sequence.

Shape legend: B batch, T fbank frames (10 ms), T' subsampled frames (40 ms), F mel bins,
C model width, V CTC vocabulary (index 0 is the blank), S compressed length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import TransformerStack

COMPRESSION_MODES = ("average", "remove_blank", "none")


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames left after two 3x3 stride-2 convolutions without padding: T -> ((T-3)//2+1 -3)//2+1."""
    once = torch.div(lengths - 3, 2, rounding_mode="floor") + 1
    return (torch.div(once - 3, 2, rounding_mode="floor") + 1).clamp(min=0)


def min_input_frames(n_out: int) -> int:
    """Fewest input frames that ``subsampled_lengths`` maps to >= n_out >= 1 frames."""
    return 4 * n_out + 3


class Conv2dSubsampling(nn.Module):
    """Two stride-2 Conv2D layers over (time, mel): 4x shorter in time, projected to d_model."""

    def __init__(self, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=2)
        freq = ((n_mels - 3) // 2 + 1 - 3) // 2 + 1  # 80 mel bins -> 19
        self.proj = nn.Linear(channels * freq, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)  # (B, T, F) -> (B, 1, T, F)
        x = F.gelu(self.conv1(x))  # (B, c, T/2, F/2)
        x = F.gelu(self.conv2(x))  # (B, c, T', F/4)
        b, c, t, f = x.shape
        x = self.proj(x.transpose(1, 2).reshape(b, t, c * f))  # (B, T', C)
        # Scale up so the content, not the unit-amplitude position table added next, dominates at
        # the start of training (as token embeddings are scaled in the Transformer paper / ESPnet).
        return x * self.proj.out_features ** 0.5


class CTCCompressor(nn.Module):
    """2 Conv2D (stride 2 each) + Transformer layers + a linear CTC head.

    With ``char_layer = k > 0`` an auxiliary character CTC head reads the output of layer k
    (hierarchical CTC): dense character supervision low in the stack makes the subword head on
    top learn much faster on small data (docs/design.md). Only the subword head compresses.
    """

    def __init__(self, n_mels: int, conv_channels: int, d_model: int, n_heads: int,
                 n_layers: int, ff_dim: int, dropout: float, vocab_size: int,
                 char_vocab_size: int = 0, char_layer: int = 0):
        super().__init__()
        self.subsample = Conv2dSubsampling(n_mels, conv_channels, d_model)
        self.encoder = TransformerStack(d_model, n_heads, n_layers, ff_dim, dropout)
        self.ctc_head = nn.Linear(d_model, vocab_size)
        self.char_layer = char_layer if char_vocab_size else 0
        if self.char_layer:
            self.char_head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, char_vocab_size))
        self.d_model = d_model

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, with_chars: bool = False):
        """feats (B, T, F), lengths (B,) -> hidden (B, T', C), logits (B, T', V), lengths (B,)
        [, character logits (B, T', V_char) when ``with_chars``]."""
        x = self.subsample(feats)  # (B, T, F) -> (B, T', C)
        out_lengths = subsampled_lengths(lengths).clamp(max=x.shape[1])
        if not with_chars:
            hidden = self.encoder(x, out_lengths)
            return hidden, self.ctc_head(hidden), out_lengths
        hidden, tapped = self.encoder(x, out_lengths, tap=self.char_layer)
        return hidden, self.ctc_head(hidden), out_lengths, self.char_head(tapped)


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor) -> torch.Tensor:
    """CTC loss summed over the batch and divided by the number of target tokens.

    logits (B, T', V), lengths (B,), targets (B, L) padded, target_lengths (B,).
    """
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T', B, V)
    loss = F.ctc_loss(log_probs, targets, lengths, target_lengths,
                      blank=0, reduction="sum", zero_infinity=True)
    return loss / target_lengths.sum().clamp(min=1)


def ctc_compress(hidden: torch.Tensor, logits: torch.Tensor, lengths: torch.Tensor,
                 mode: str, blank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shorten ``hidden`` (B, T, C) with the greedy CTC labels ``logits.argmax(-1)``.

    - ``"remove_blank"``: keep, in order, exactly the frames whose greedy label is not blank;
    - ``"average"``: replace each maximal run of identical labels (blank runs included) by the
      mean of its frames;
    - ``"none"``: return the input unchanged.

    Frames at or past ``lengths[b]`` never contribute. A row whose valid frames are all blank keeps
    one vector, the mean of its valid frames. Returns (compressed (B, S, C) zero-padded to the
    longest row, new_lengths (B,)). Vectorised: no Python loop over frames.
    """
    if mode not in COMPRESSION_MODES:
        raise ValueError(f"unknown compression mode {mode!r}; choose one of {COMPRESSION_MODES}")
    if mode == "none":
        return hidden, lengths
    if bool((lengths < 1).any()):
        raise ValueError("ctc_compress needs at least one valid frame per row")
    b, t, c = hidden.shape
    labels = logits.argmax(-1)  # (B, T)
    valid = torch.arange(t, device=hidden.device)[None, :] < lengths[:, None]  # (B, T)
    if mode == "remove_blank":
        keep = valid & (labels != blank)
        all_blank = ~keep.any(dim=1)  # (B,): fall back to one averaged vector
        keep = keep | (valid & all_blank[:, None])
        slot = torch.where(all_blank[:, None], torch.zeros_like(labels), keep.cumsum(1) - 1)
    else:  # average: a new run starts where the label changes
        change = torch.ones_like(valid)
        change[:, 1:] = labels[:, 1:] != labels[:, :-1]
        keep = valid
        slot = change.cumsum(1) - 1  # (B, T) run index of every frame
    new_lengths = torch.where(keep, slot + 1, torch.zeros_like(slot)).amax(dim=1)  # (B,)
    s = int(new_lengths.max())
    flat = (torch.arange(b, device=hidden.device)[:, None] * s + slot)[keep]  # (N,)
    sums = hidden.new_zeros(b * s, c).index_add(0, flat, hidden[keep])  # (B*S, C)
    counts = hidden.new_zeros(b * s).index_add(0, flat, hidden.new_ones(flat.shape[0]))
    out = sums / counts.clamp(min=1)[:, None]
    return out.view(b, s, c), new_lengths
