"""Length-bucketed batching with a cap on padded frames, deterministic and resumable.

The batch schema every stage uses: ``feats`` (B, T, 80) float32 zero-padded, ``feat_lengths`` (B,)
int64, plus stage-specific token tensors padded with ``pad_tokens``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..errors import UsageError

CHUNK = 2000  # items sorted together: larger = less padding, smaller = more randomness


class LengthBucketSampler:
    """Yields lists of item indices whose padded size ``len(batch) * max_len`` stays <= max_frames.

    Each epoch: shuffle with ``seed + epoch``, sort chunks of CHUNK items by length, cut greedy
    batches, shuffle the batch order. With ``world_size > 1`` every rank takes every
    ``world_size``-th batch (the list is truncated to a multiple so ranks stay in step). Its
    position (epoch, batch index) is checkpointed via ``state_dict``.
    """

    def __init__(self, lengths: Sequence[int], max_frames: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        if not lengths:
            raise UsageError("cannot batch an empty dataset")
        too_long = max(lengths)
        if too_long > max_frames:
            raise UsageError(f"an item of {too_long} frames exceeds max_frames={max_frames}")
        self.lengths = list(lengths)
        self.max_frames, self.seed, self.shuffle = max_frames, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = 0, 0

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of this rank for ``epoch`` (pure function of seed, epoch, rank)."""
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        batches: list[list[int]] = []
        for start in range(0, n, CHUNK):
            chunk = sorted(order[start : start + CHUNK], key=lambda i: self.lengths[i])
            batch, longest = [], 0
            for i in chunk:
                longest_if = max(longest, self.lengths[i])
                if batch and longest_if * (len(batch) + 1) > self.max_frames:
                    batches.append(batch)
                    batch, longest_if = [], self.lengths[i]
                batch.append(i)
                longest = longest_if
            if batch:
                batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        usable = len(batches) - len(batches) % self.world_size
        if usable == 0:
            raise UsageError(f"{len(batches)} batches cannot feed {self.world_size} processes")
        return batches[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        """Endless stream of batches, resuming from the current position."""
        while True:
            epoch_batches = self.batches(self.epoch)
            while self.index < len(epoch_batches):
                batch = epoch_batches[self.index]
                self.index += 1
                yield batch
            self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def pad_feats(feats: Sequence[torch.Tensor], device: torch.device | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i, F) -> (B, T_max, F) zero-padded, lengths (B,); created on ``device``
    (default: that of the features)."""
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long, device=device)
    out = feats[0].new_zeros(len(feats), int(lengths.max()), feats[0].shape[1], device=device)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lengths


def pad_tokens(seqs: Sequence[Sequence[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """List of token lists -> (B, L_max) padded with ``pad``, lengths (B,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), max(int(lengths.max()), 1)), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lengths
