"""Feature cache: every distinct audio file of a manifest decoded once, its features computed once
and stored as safetensors.

The features are the compressor backbone's cacheable part (``CTCCompressor.features``): Kaldi
fbank for the paper's conv front end, the frozen Whisper encoder's output for ``whisper-base``, so
epochs never re-run a frozen model. Rows that share an audio file (the ST and ASR rows of one
recording) share one feature matrix. Features are stored as float16 (log-mel values of magnitude
< 30 keep ~1e-2 precision, Whisper's hidden states ~1e-3 relative) to halve memory; they are
returned as float32. The cache is keyed by the extractor (its ``key``: backbone and frozen depth)
and the audio paths, sizes and mtimes, so another backbone or an edited file recomputes it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import write_atomic
from ..audio import AudioError, fbank, load_audio, spec_augment
from ..audio.augment import Augmenter
from ..config import ExperimentConfig, FeatureConfig
from ..device import rank0_first
from ..progress import progress as progress_bar
from .batching import pad_feats
from .manifest import read_manifest


class FbankExtractor:
    """The paper's features: Kaldi fbank (T, 80) of each wave (what the scratch backbone reads)."""

    key, feature_dim = "fbank", 80

    def __call__(self, waves: list) -> list[torch.Tensor]:
        return [fbank(w) for w in waves]


class BackboneFeatures:
    """A compressor backbone's cacheable features (``backbone.features``) as an extractor."""

    def __init__(self, backbone):
        self.backbone, self.key, self.feature_dim = backbone, backbone.key, backbone.feature_dim

    def __call__(self, waves: list) -> list[torch.Tensor]:
        return self.backbone.features(waves)


def sample_hours(paths: list[str], hours: float, seed: int) -> list[str]:
    """A seeded sample of ``paths`` (audio files) of at most ``hours`` of audio in all, from their
    headers (nothing decoded); ``hours`` <= 0: all of them. Sorted, so it does not depend on the
    order given."""
    paths = sorted(set(paths))
    if hours <= 0:
        return paths
    import soundfile as sf

    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen, total = [], 0.0
    for i in order:
        try:
            seconds = sf.info(paths[i]).duration
        except (RuntimeError, OSError):  # unreadable: load_features reports it
            seconds = 0.0
        if total + seconds > hours * 3600:
            continue
        chosen.append(paths[i])
        total += seconds
    return sorted(chosen)


def _stamp(path: str) -> str:
    """What identifies a file's content for the cache: its size and modification time."""
    st = os.stat(path) if os.path.exists(path) else None
    return f"{st.st_size}:{st.st_mtime_ns}" if st else "missing"


@dataclass
class FeatureStore:
    """Feature matrices (T, F) of a set of audio files, addressed by absolute path."""

    feats: torch.Tensor  # (sum of T, F) float16, all files concatenated
    offsets: dict[str, tuple[int, int]]  # path -> (start, T)
    errors: list[str]  # one message per file that could not be decoded (skipped)

    def __contains__(self, path: str) -> bool:
        return path in self.offsets

    def num_frames(self, path: str) -> int:
        return self.offsets[path][1]

    def get(self, path: str) -> torch.Tensor:
        start, n = self.offsets[path]
        return self.feats[start : start + n].float()  # (T, F)


def _read_cache(cache_file: Path, key: str):
    """(feats, {path: (start, T, stamp)}, {path: (error, stamp)}) of a cache file written by the
    extractor ``key``; empty when there is none (or another extractor's)."""
    if cache_file.exists():
        from safetensors import safe_open

        with safe_open(str(cache_file), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("extractor") == key:
            return (load_file(str(cache_file))["feats"], json.loads(meta["index"]),
                    json.loads(meta["errors"]))
    return None, {}, {}


def load_features(audio_paths: list[str], cache_file: str | os.PathLike, progress: bool = True,
                  extractor=None, chunk: int = 64) -> FeatureStore:
    """Features of every distinct path: those ``cache_file`` holds for the file as it is now (same
    size and mtime), the others computed (in chunks of ``chunk`` files: ``extractor`` batches them)
    and added to the cache. ``extractor``: a callable list of 16 kHz waves -> list of (T_i, F)
    with a ``key`` naming it and its ``feature_dim`` (default: fbank). A cache of another
    extractor is replaced.

    Files that fail to decode are skipped and reported in ``FeatureStore.errors``.
    """
    extractor = extractor or FbankExtractor()
    paths = sorted(set(audio_paths))
    stamps = {p: _stamp(p) for p in paths}
    cache_file = Path(cache_file)
    old, index, failed = _read_cache(cache_file, extractor.key)
    todo = [p for p in paths if (index.get(p) or [0, 0, None])[2] != stamps[p]
            and (failed.get(p) or [None, None])[1] != stamps[p]]
    if not todo:
        return FeatureStore(old, {p: (v[0], v[1]) for p, v in index.items()},
                            [failed[p][0] for p in paths if p in failed])
    chunks = [old] if old is not None else []
    start = old.shape[0] if old is not None else 0
    index = {p: v for p, v in index.items() if p not in todo}
    failed = {p: v for p, v in failed.items() if p not in todo}
    bar = progress_bar(total=len(todo), desc=f"features {cache_file.name}", unit="file",
                       disable=not progress)
    for i in range(0, len(todo), chunk):
        good, waves = [], []
        for path in todo[i:i + chunk]:
            try:
                waves.append(load_audio(path))
                good.append(path)
            except AudioError as e:
                failed[path] = (str(e), stamps[path])
        for path, feats in zip(good, extractor(waves) if waves else []):
            chunks.append(feats.half())
            index[path] = (start, feats.shape[0], stamps[path])
            start += feats.shape[0]
        bar.update(len(todo[i:i + chunk]))
    bar.close()
    all_feats = torch.cat(chunks) if chunks else torch.zeros(0, extractor.feature_dim,
                                                             dtype=torch.float16)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache_file, lambda tmp: save_file(
        {"feats": all_feats.contiguous()}, str(tmp),
        metadata={"extractor": extractor.key, "index": json.dumps(index), "errors": json.dumps(failed)}))
    return FeatureStore(all_feats, {p: (v[0], v[1]) for p, v in index.items()},
                        [failed[p][0] for p in paths if p in failed])


def training_features(store: FeatureStore, paths: list[str], generator: torch.Generator,
                      augmenter: Augmenter | None = None,
                      speeds: list[list[float]] | None = None, extractor=None) -> list[torch.Tensor]:
    """Features (T_i, F) of each training row: from the cache, except for the rows drawn from
    ``generator`` for augmentation (a share ``augmenter.cfg.prob``), whose features ``extractor``
    (default fbank) computes from the augmented wave at one of the row's feasible ``speeds``.
    Without an augmenter nothing is drawn, so the generator's stream is what it was before
    augmentation existed."""
    if augmenter is None:
        return [store.get(p) for p in paths]
    extractor = extractor or FbankExtractor()
    chosen = (torch.rand(len(paths), generator=generator) < augmenter.cfg.prob).tolist()
    return [extractor([augmenter(load_audio(p), generator, s)])[0] if c else store.get(p)
            for p, s, c in zip(paths, speeds, chosen)]


def training_batch(store: FeatureStore, paths: list[str], generator: torch.Generator, cmvn,
                   features: FeatureConfig, augmenter: Augmenter | None = None,
                   speeds: list[list[float]] | None = None, extractor=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch's features, as both stages build it: :func:`training_features`, CMVN,
    padding, then SpecAugment when ``features.spec_augment`` (its draws from ``generator``).
    Returns (B, T, F) and lengths (B,)."""
    feats = training_features(store, paths, generator, augmenter, speeds, extractor)
    feats, lengths = pad_feats([cmvn(x) for x in feats])
    if features.spec_augment:
        feats = spec_augment(feats, lengths, freq_masks=features.freq_masks, freq_width=features.freq_width,
                             time_masks=features.time_masks, time_width_ratio=features.time_width_ratio,
                             generator=generator)
    return feats, lengths


def feature_cache_path(manifest: str | Path, key: str = "fbank") -> Path:
    """Where a manifest's features of kind ``key`` (the extractor's) are cached."""
    manifest = Path(manifest)
    name = f"{manifest.stem}.safetensors" if key == "fbank" else f"{manifest.stem}.{key}.safetensors"
    return manifest.parent / ".fbank" / name


def training_audio(cfg: ExperimentConfig) -> set[str]:
    """The audio files of the training manifest that training uses: all, or the seeded sample of
    ``data.max_hours`` (the same for both stages)."""
    paths = [u.audio for u in read_manifest(cfg.data.train)]
    return set(sample_hours(paths, cfg.data.max_hours, cfg.train.seed))


def manifest_recordings(manifest: str | Path, extractor, progress: bool = True,
                        keep: set[str] | None = None):
    """Distinct recordings of a manifest with a source transcript: [(audio, src_text, src_lang)]
    (only those in ``keep`` when given), plus their features by ``extractor`` (cached beside the
    manifest; computed by rank 0 first under torchrun). Rows sharing an audio file (ST + ASR of
    one recording) count once."""
    seen: dict[str, tuple[str, str, str]] = {}
    for u in read_manifest(manifest):
        if u.src_text and u.audio not in seen and (keep is None or u.audio in keep):
            seen[u.audio] = (u.audio, u.src_text, u.src_lang)
    recs = sorted(seen.values())
    store = rank0_first(load_features, [r[0] for r in recs],
                        feature_cache_path(manifest, extractor.key), progress=progress,
                        extractor=extractor)
    if store.errors:
        print(f"{manifest}: skipped {len(store.errors)} unreadable audio file(s), e.g. "
              f"{store.errors[0]}", file=sys.stderr)
    return [r for r in recs if r[0] in store], store




def training_features_store(cfg: ExperimentConfig, paths: list[str], extractor,
                            progress: bool = True) -> FeatureStore:
    """The features of training recordings ``paths`` (cached beside the training manifest)."""
    return rank0_first(load_features, paths, feature_cache_path(cfg.data.train, extractor.key),
                       progress=progress, extractor=extractor)
