"""Fbank feature cache: every distinct audio file of a manifest decoded once, stored as safetensors.

Rows that share an audio file (the ST and ASR rows of one recording) share one feature matrix.
Features are stored as float16 (log-mel values of magnitude < 30 keep ~1e-2 precision) to halve
memory; they are returned as float32. The cache is keyed by the audio paths, sizes and mtimes, so
editing or replacing a file recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..audio import AudioError, fbank, load_audio
from ..augment import Augmenter
from ..progress import progress as progress_bar


def _fingerprint(paths: list[str]) -> str:
    h = hashlib.sha1()
    for p in paths:
        st = os.stat(p) if os.path.exists(p) else None
        h.update(f"{p}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


@dataclass
class FeatureStore:
    """Fbank matrices (T, 80) of a set of audio files, addressed by absolute path."""

    feats: torch.Tensor  # (sum of T, 80) float16, all files concatenated
    offsets: dict[str, tuple[int, int]]  # path -> (start, T)
    errors: list[str]  # one message per file that could not be decoded (skipped)

    def __contains__(self, path: str) -> bool:
        return path in self.offsets

    def num_frames(self, path: str) -> int:
        return self.offsets[path][1]

    def get(self, path: str) -> torch.Tensor:
        start, n = self.offsets[path]
        return self.feats[start : start + n].float()  # (T, 80)


def load_features(audio_paths: list[str], cache_file: str | os.PathLike,
                  progress: bool = True) -> FeatureStore:
    """Fbank of every distinct path, from ``cache_file`` when it is current, else computed and saved.

    Files that fail to decode are skipped and reported in ``FeatureStore.errors``.
    """
    paths = sorted(set(audio_paths))
    key = _fingerprint(paths)
    cache_file = Path(cache_file)
    if cache_file.exists():
        from safetensors import safe_open

        with safe_open(str(cache_file), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("fingerprint") == key:
            index = json.loads(meta["index"])
            return FeatureStore(load_file(str(cache_file))["feats"],
                                {p: tuple(v) for p, v in index.items()}, json.loads(meta["errors"]))
    chunks, offsets, errors, start = [], {}, [], 0
    bar = progress_bar(paths, desc=f"fbank {cache_file.stem}", unit="file", disable=not progress)
    for path in bar:
        try:
            feats = fbank(load_audio(path))
        except AudioError as e:
            errors.append(str(e))
            continue
        chunks.append(feats.half())
        offsets[path] = (start, feats.shape[0])
        start += feats.shape[0]
    all_feats = torch.cat(chunks) if chunks else torch.zeros(0, 80, dtype=torch.float16)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    save_file({"feats": all_feats.contiguous()}, str(tmp),
              metadata={"fingerprint": key, "index": json.dumps(offsets), "errors": json.dumps(errors)})
    os.replace(tmp, cache_file)
    return FeatureStore(all_feats, offsets, errors)


def training_features(store: FeatureStore, paths: list[str], generator: torch.Generator,
                      augmenter: Augmenter | None = None,
                      speeds: list[list[float]] | None = None) -> list[torch.Tensor]:
    """Fbank (T_i, 80) of each training row: from the cache, except for the rows drawn from
    ``generator`` for augmentation (a share ``augmenter.cfg.prob``), whose features are computed
    from the augmented wave at one of the row's feasible ``speeds``. Without an augmenter nothing
    is drawn, so the generator's stream is what it was before augmentation existed."""
    if augmenter is None:
        return [store.get(p) for p in paths]
    chosen = (torch.rand(len(paths), generator=generator) < augmenter.cfg.prob).tolist()
    return [fbank(augmenter(load_audio(p), generator, s)) if c else store.get(p)
            for p, s, c in zip(paths, speeds, chosen)]
