"""CTC compressor: features -> acoustic backbone -> Transformer layers -> CTC logits -> a
shorter sequence.

Shape legend: B batch, T feature frames (fbank 10 ms, or Whisper encoder 20 ms), T' backbone output
frames (40 ms for the paper's conv front end), F feature dims, C model width, V CTC vocabulary
(index 0 is the blank), S compressed length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .backbones import Conv2dSubsampling, min_input_frames, subsampled_lengths  # noqa: F401 (re-exported)
from .transformer import TransformerStack

COMPRESSION_MODES = ("average", "remove_blank", "none")


class CTCCompressor(nn.Module):
    """An acoustic backbone (``models/backbones.py``: the paper's 2 Conv2D, or a pretrained
    Whisper-base encoder) + Transformer layers + a linear CTC head.

    With ``char_layer = k > 0`` an auxiliary character CTC head reads the output of layer k
    (hierarchical CTC): dense character supervision low in the stack makes the subword head on
    top learn much faster on small data (docs/design.md). Only the subword head compresses.
    """

    def __init__(self, backbone: nn.Module, d_model: int, n_heads: int,
                 n_layers: int, ff_dim: int, dropout: float, vocab_size: int,
                 char_vocab_size: int = 0, char_layer: int = 0):
        super().__init__()
        self.backbone = backbone
        self.encoder = TransformerStack(d_model, n_heads, n_layers, ff_dim, dropout)
        self.ctc_head = nn.Linear(d_model, vocab_size)
        self.char_layer = char_layer if char_vocab_size else 0
        if self.char_layer:
            self.char_head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, char_vocab_size))
        self.d_model = d_model
        # checkpoints from before the backbones named the conv front end "subsample"
        self._register_load_state_dict_pre_hook(_rename_subsample)

    @property
    def frame_samples(self) -> int:
        """Samples of one output frame (one CTC label) at 16 kHz."""
        return self.backbone.frame_samples

    @property
    def stride(self) -> int:
        """Feature frames per output frame."""
        return self.backbone.stride

    @property
    def feature_rate(self) -> int:
        """Feature frames per second (what ``features`` returns, ``forward`` takes)."""
        return self.backbone.feature_rate

    def features(self, waves) -> list[torch.Tensor]:
        """16 kHz waves -> the backbone's features (T_i, F): what the feature cache stores."""
        return self.backbone.features(waves)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, with_chars: bool = False):
        """feats (B, T, F), lengths (B,) -> hidden (B, T', C), logits (B, T', V), lengths (B,)
        [, character logits (B, T', V_char) when ``with_chars``]."""
        x, out_lengths = self.backbone(feats, lengths)  # (B, T, F) -> (B, T', C)
        if not with_chars:
            hidden = self.encoder(x, out_lengths)
            return hidden, self.ctc_head(hidden), out_lengths
        hidden, tapped = self.encoder(x, out_lengths, tap=self.char_layer)
        return hidden, self.ctc_head(hidden), out_lengths, self.char_head(tapped)


def _rename_subsample(state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "subsample.")]:
        state_dict[prefix + "backbone." + key[len(prefix + "subsample."):]] = state_dict.pop(key)


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
        raise UsageError(f"unknown compression mode {mode!r}; choose one of {COMPRESSION_MODES}")
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
