"""Tests for speechllama.audio: loading, validation, Kaldi-compatible fbank, CMVN, SpecAugment."""


import numpy as np
import pytest
import soundfile as sf
import torch

from speechllama.audio import (
    CMVN,
    HOP_LENGTH,
    MIN_SECONDS,
    N_MELS,
    SAMPLE_RATE,
    WIN_LENGTH,
    AudioError,
    fbank,
    load_audio,
    num_frames,
    spec_augment,
    validate_wave,
)


def speechish(n: int, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Tones + amplitude-modulated noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sample_rate
    tones = sum(a * np.sin(2 * np.pi * f * t) for a, f in [(0.2, 220), (0.1, 1234), (0.05, 3100)])
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    noise = 0.05 * envelope * rng.standard_normal(n)
    return (tones * envelope + noise).astype(np.float32)


def sine(freq: float, seconds: float, sample_rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_freqs(wave: np.ndarray, sample_rate: int, k: int) -> list[float]:
    """Frequencies (Hz) of the k largest, well separated, spectral peaks."""
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    freqs = np.fft.rfftfreq(len(wave), 1 / sample_rate)
    found = []
    for i in np.argsort(spec)[::-1]:
        if all(abs(freqs[i] - f) > 50 for f in found):
            found.append(freqs[i])
        if len(found) == k:
            return sorted(found)
    return sorted(found)


# --------------------------------------------------------------------------- fbank


def kaldi_native_fbank(wave: np.ndarray) -> np.ndarray:
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = N_MELS
    computer = knf.OnlineFbank(opts)
    # kaldi-native-fbank uses samples as given; Kaldi's int16 scale means feeding wave * 32768
    computer.accept_waveform(SAMPLE_RATE, (wave * 32768).tolist())
    computer.input_finished()
    return np.stack([computer.get_frame(i) for i in range(computer.num_frames_ready)])


def test_fbank_matches_kaldi_native_fbank():
    wave = speechish(int(1.3 * SAMPLE_RATE))
    ours = fbank(wave)
    ref = kaldi_native_fbank(wave)
    assert ours.dtype == torch.float32
    assert ours.shape == (num_frames(len(wave)), N_MELS) == ref.shape
    assert np.abs(ours.numpy() - ref).max() < 1e-2


def test_fbank_accepts_tensor_and_resamples():
    wave = speechish(SAMPLE_RATE)
    assert torch.equal(fbank(torch.from_numpy(wave)), fbank(wave))
    wave_8k = speechish(8000, sample_rate=8000)
    feats = fbank(wave_8k, sample_rate=8000)
    assert feats.shape == (num_frames(SAMPLE_RATE), N_MELS)
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("n", [399, 400, 401, 559, 560, 561, 16000])
def test_frame_counts(n):
    expected = 0 if n < WIN_LENGTH else 1 + (n - WIN_LENGTH) // HOP_LENGTH
    assert num_frames(n) == expected
    feats = fbank(speechish(n))
    assert feats.shape == (expected, N_MELS)


def test_fbank_rejects_2d():
    with pytest.raises(ValueError):
        fbank(np.zeros((1000, 2), np.float32))


# --------------------------------------------------------------------------- loading


def test_resample_stereo_44k(tmp_path):
    rate, seconds = 44100, 1.0
    stereo = np.stack([sine(440, seconds, rate), sine(1000, seconds, rate)], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, rate, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - round(len(stereo) * SAMPLE_RATE / rate)) <= 1
    assert peak_freqs(wave, SAMPLE_RATE, 2) == pytest.approx([440, 1000], abs=2)


def test_upsample_8k(tmp_path):
    path = tmp_path / "narrow.wav"
    sf.write(path, sine(300, 0.5, 8000), 8000)
    wave = load_audio(path)
    assert abs(len(wave) - 8000) <= 1
    assert peak_freqs(wave, SAMPLE_RATE, 1) == pytest.approx([300], abs=3)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_formats_load(tmp_path, fmt):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} on this machine cannot write {fmt}")
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, sine(500, 1.0, 22050), 22050, format=fmt)
    wave = load_audio(path)
    assert abs(len(wave) - SAMPLE_RATE) <= (2000 if fmt == "MP3" else 1)  # mp3 adds encoder padding
    assert peak_freqs(wave, SAMPLE_RATE, 1) == pytest.approx([500], abs=3)


def test_channel_mix_is_mean(tmp_path):
    n = SAMPLE_RATE // 2
    channels = np.stack([np.full(n, 0.5), np.full(n, -0.25), np.full(n, 0.125)], axis=1).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, channels, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), np.full(n, 0.125, np.float32), atol=1e-7)
    np.testing.assert_allclose(validate_wave(channels, SAMPLE_RATE), np.full(n, 0.125), atol=1e-7)


# --------------------------------------------------------------------------- bad audio


def _write_truncated_wav(path):
    sf.write(path, sine(440, 1.0, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header still promises 1 s of data


def _write_truncated(fmt):
    def write(path):
        sf.write(path, speechish(2 * SAMPLE_RATE), SAMPLE_RATE, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return write


def _write_zero_samples(path):
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE)


def _write_wave(wave, rate=SAMPLE_RATE, subtype="FLOAT"):
    return lambda path: sf.write(path, wave, rate, subtype=subtype)


def _nan_wave():
    wave = sine(440, 0.5, SAMPLE_RATE)
    wave[100] = np.nan
    wave[200] = np.inf
    return wave


BAD_FILES = {
    "missing.wav": (lambda path: None, "not found"),
    "text.wav": (lambda path: path.write_text("this is not audio\n" * 20), "cannot decode"),
    "random.flac": (lambda path: path.write_bytes(np.random.default_rng(0).bytes(4000)), "cannot decode"),
    "headerless.raw": (lambda path: path.write_bytes(np.random.default_rng(0).bytes(4000)), "cannot decode"),
    "empty.wav": (lambda path: path.write_bytes(b""), "0 bytes"),
    "zero.wav": (_write_zero_samples, "0 samples"),
    "short.wav": (_write_wave(sine(440, MIN_SECONDS / 2, SAMPLE_RATE)), "too short"),
    "tiny.wav": (_write_wave(sine(440, 399 / SAMPLE_RATE, SAMPLE_RATE)), "too short"),
    "nan.wav": (_write_wave(_nan_wave()), "NaN"),
    "silent.wav": (_write_wave(np.zeros(SAMPLE_RATE, np.float32)), "silent"),
    "dither.wav": (_write_wave(np.full(SAMPLE_RATE, 3e-5, np.float32), subtype="PCM_16"), "silent"),
    "trunc.wav": (_write_truncated_wav, "truncated"),
    "trunc.flac": (_write_truncated("FLAC"), "truncated"),
    "trunc.ogg": (_write_truncated("OGG"), "truncated"),
    "trunc.mp3": (_write_truncated("MP3"), "truncated"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_audio_raises(tmp_path, name):
    write, words = BAD_FILES[name]
    if name.endswith(".mp3") and "MP3" not in sf.available_formats():
        pytest.skip("libsndfile on this machine cannot write MP3")
    path = tmp_path / name
    write(path)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert message.startswith(str(path)) and name in message
    assert words in message


def test_bad_directory(tmp_path):
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)


def test_validate_wave_errors():
    good = sine(440, 0.5, SAMPLE_RATE)
    assert validate_wave(good, SAMPLE_RATE).dtype == np.float32
    with pytest.raises(AudioError, match=r"^mic: invalid sample rate"):
        validate_wave(good, 0, name="mic")
    with pytest.raises(AudioError, match=r"^<array>: invalid sample rate"):
        validate_wave(good, -16000)
    with pytest.raises(AudioError, match="shape"):
        validate_wave(np.zeros((2, 2, 2), np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="0 samples"):
        validate_wave(np.zeros(0, np.float32), SAMPLE_RATE)
    int16 = (good * 32767).astype(np.int16)
    np.testing.assert_allclose(validate_wave(int16, SAMPLE_RATE), good, atol=1e-4)


# --------------------------------------------------------------------------- CMVN


def test_cmvn_normalises_and_round_trips():
    feats = [fbank(speechish(SAMPLE_RATE + 1000 * i, seed=i)) for i in range(4)]
    cmvn = CMVN.from_features(feats)
    normed = torch.cat([cmvn(f) for f in feats])
    assert normed.mean(dim=0).abs().max() < 1e-4
    assert (normed.std(dim=0, unbiased=False) - 1).abs().max() < 1e-3

    state = cmvn.state_dict()
    assert set(state) == {"mean", "std"}
    assert all(v.shape == (N_MELS,) and v.dtype == torch.float32 for v in state.values())
    restored = CMVN.from_state_dict({k: v.clone() for k, v in state.items()})
    batch = torch.stack([feats[0][:50], feats[1][:50]])  # (2, 50, 80): leading dims pass through
    assert torch.equal(restored(batch), cmvn(batch))


def test_cmvn_constant_dimension_is_finite():
    feats = torch.randn(100, N_MELS)
    feats[:, 3] = 7.0
    assert torch.isfinite(CMVN.from_features([feats])(feats)).all()


# --------------------------------------------------------------------------- SpecAugment


def _batch():
    feats = torch.randn(4, 300, N_MELS, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([300, 250, 120, 0])
    return feats, lengths


def test_spec_augment_deterministic_and_pure():
    feats, lengths = _batch()
    original = feats.clone()
    a = spec_augment(feats, lengths, generator=torch.Generator().manual_seed(123))
    b = spec_augment(feats, lengths, generator=torch.Generator().manual_seed(123))
    c = spec_augment(feats, lengths, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(feats, original)  # input untouched
    assert a.shape == feats.shape and a.dtype == feats.dtype


def test_spec_augment_respects_lengths_and_masks():
    feats, lengths = _batch()
    saw_time = saw_freq = False
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        out = spec_augment(feats, lengths, freq_width=30, time_width_ratio=0.2, generator=gen)
        masked = (out == 0) & (feats != 0)
        for row, length in enumerate(lengths.tolist()):
            assert torch.equal(out[row, length:], feats[row, length:])  # padding unchanged
        assert masked[:3].any(dim=(1, 2)).all()  # widths > 0 mask something in every non-empty row
        assert torch.equal(out[3], feats[3])  # a zero-length row is all padding
        saw_time |= bool(masked[0].all(dim=1).any())  # a whole frame zeroed
        saw_freq |= bool(masked[0].all(dim=0).any())  # a whole bin zeroed (row 0 has no padding)
    assert saw_time and saw_freq


def test_spec_augment_zero_widths_is_identity():
    feats, lengths = _batch()
    gen = torch.Generator().manual_seed(0)
    out = spec_augment(feats, lengths, freq_width=0, time_width_ratio=0.0, generator=gen)
    assert torch.equal(out, feats)
