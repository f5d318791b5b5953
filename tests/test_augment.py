"""Waveform augmentation: each transform's defining property, determinism, config checks, and a
tiny stage-1 run with augmentation that resumes exactly."""

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY
from safetensors.torch import load_file

from speechllama.audio import fbank, load_audio, num_frames
from speechllama.audio.augment import (
    Augmenter,
    add_noise,
    apply_gain,
    fast_fft_length,
    frame_range,
    pink_noise,
    speed_perturb,
    telephone,
    white_noise,
)
from speechllama.cli import main
from speechllama.config import AugmentConfig, ConfigError, load_config
from speechllama.data.features import training_features
from speechllama.models.ctc_compressor import min_input_frames, subsampled_lengths
from speechllama.training.ctc import CTCTask

SR = 16000


def weights(run_dir):
    latest = (run_dir / "latest").read_text().strip()
    return load_file(str(run_dir / latest / "model.safetensors"))


def tone(freq: float, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / SR)[spectrum.argmax()])


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2)
                         / np.mean((noisy.astype(np.float64) - clean) ** 2))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_scales_length_and_pitch(factor):
    wave = tone(1000.0)
    out = speed_perturb(wave, factor)
    assert abs(out.size - wave.size / factor) <= 1
    assert peak_hz(out) == pytest.approx(1000.0 * factor, abs=2.0)


@pytest.mark.parametrize("n_samples", [400, 559, 560, 16000, 16159, 48001])
@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_frame_range_holds_the_real_frame_count(n_samples, factor):
    out = speed_perturb(np.random.default_rng(0).standard_normal(n_samples).astype(np.float32), factor)
    fewest, most = frame_range(num_frames(n_samples), factor)
    assert fewest <= num_frames(out.size) <= most and most - fewest <= 3


def test_fast_fft_length():
    assert [fast_fft_length(n) for n in (1, 7, 47123, 48000, 48001)] == [1, 8, 48000, 48000, 48600]


def test_min_input_frames_inverts_subsampling():
    for n_out in range(1, 20):
        t = min_input_frames(n_out)
        assert subsampled_lengths(torch.tensor(t)) >= n_out > subsampled_lengths(torch.tensor(t - 1))


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_noise_at_the_requested_snr(kind, snr, tmp_path):
    rng = np.random.default_rng(1)
    wave = tone(440.0)
    noise = {"white": lambda: white_noise(wave.size, rng), "pink": lambda: pink_noise(wave.size, rng),
             "babble": lambda: tone(700.0, amplitude=0.1)}[kind]()
    assert snr_db(wave, add_noise(wave, noise, snr)) == pytest.approx(snr, abs=0.5)


def test_pink_noise_falls_3_db_per_octave():
    power = np.abs(np.fft.rfft(pink_noise(2**16, np.random.default_rng(0)))) ** 2
    freqs = np.fft.rfftfreq(2**16, 1 / SR)
    band = lambda lo: power[(freqs >= lo) & (freqs < 2 * lo)].mean()  # noqa: E731
    assert 10 * np.log10(band(500) / band(1000)) == pytest.approx(3.0, abs=0.5)


def test_babble_mixes_in_a_training_recording(tmp_path):
    other = tone(700.0, seconds=0.4)  # shorter than the row: tiled
    sf.write(tmp_path / "other.wav", other, SR)
    cfg = AugmentConfig(prob=1.0, speeds=[1.0], noise_prob=1.0, snr_min=10, snr_max=10,
                        noise_kinds=["babble"], telephone_prob=0.0, gain_db=0.0)
    wave = tone(300.0)
    out = Augmenter(cfg, [str(tmp_path / "other.wav")])(wave, np.random.default_rng(0))
    assert snr_db(wave, out) == pytest.approx(10.0, abs=0.5)
    assert peak_hz(out - wave) == pytest.approx(700.0, abs=2.0)


@pytest.mark.parametrize("mu_law", [False, True])
@pytest.mark.parametrize("n", [16000, 47123])  # 47123: prime, filtered at a padded FFT length
def test_telephone_keeps_only_300_to_3400_hz(mu_law, n):
    wave = (0.2 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    out = telephone(wave, mu_law=mu_law)
    assert out.shape == wave.shape  # an odd length comes back from 8 kHz one sample longer
    power = np.abs(np.fft.rfft(out)) ** 2
    freqs = np.fft.rfftfreq(out.size, 1 / SR)
    outside = power[(freqs < 300) | (freqs > 3400)].sum()
    assert outside < 1e-3 * power.sum()  # -30 dB; the flat input had 61% there
    in_band = telephone(tone(1000.0), mu_law=mu_law)
    assert snr_db(tone(1000.0), in_band) > (30 if mu_law else 50)  # passes a 1 kHz tone


def test_gain_is_exact_in_db_and_clipped():
    wave = tone(440.0)
    assert 20 * np.log10(np.abs(apply_gain(wave, -4.5)).max() / np.abs(wave).max()) == \
        pytest.approx(-4.5, abs=1e-4)
    cfg = AugmentConfig(prob=1.0, speeds=[1.0], noise_prob=0.0, telephone_prob=0.0, gain_db=20.0)
    gains = []
    for seed in range(20):
        out = Augmenter(cfg)(wave, np.random.default_rng(seed))
        assert np.abs(out).max() <= 1.0
        gains.append(20 * np.log10(np.abs(out).max() / np.abs(wave).max()))
    assert -20.0 <= min(gains) < 0 < max(gains) <= 20 * np.log10(1 / 0.3) + 1e-4  # clipped at 1


def test_same_generator_state_gives_the_same_wave(tmp_path):
    sf.write(tmp_path / "b.wav", tone(900.0), SR)
    cfg = AugmentConfig(prob=1.0, noise_prob=1.0, telephone_prob=0.5)
    augment = Augmenter(cfg, [str(tmp_path / "b.wav")])
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    first = [augment(tone(440.0), g) for _ in range(6)]
    g.set_state(state)
    again = [augment(tone(440.0), g) for _ in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert len({a.tobytes() for a in first}) == 6  # and the draws differ from call to call


def test_speeds_for_respects_the_target_and_the_batch_cap():
    augment = Augmenter(AugmentConfig(prob=1.0, speeds=[0.9, 1.0, 1.1], noise_prob=0.0))
    assert augment.speeds_for(100, 4000) == [0.9, 1.0, 1.1]
    assert augment.speeds_for(100, 4000, min_frames=95) == [0.9, 1.0]  # 1.1: ~91 frames
    assert augment.speeds_for(100, 105) == [1.0, 1.1]  # 0.9: ~111 frames
    assert augment.longest(100, [0.9, 1.0]) >= num_frames(round(((100 - 1) * 160 + 559) / 0.9))


def test_off_means_the_cache_and_no_draws(two_utterances):
    task = CTCTask(load_config(TINY, [f"data.train={two_utterances / 'train.jsonl'}"]),
                   progress=False)
    assert task.augmenter is None
    paths = [item[0] for item in task.items]
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    feats = training_features(task.store, paths, generator, task.augmenter, task.speeds)
    assert all(torch.equal(f, task.store.get(p)) for f, p in zip(feats, paths))
    assert torch.equal(generator.get_state(), state)
    # every row augmented, but with identity transforms: the features the cache was built from
    identity = AugmentConfig(prob=1.0, speeds=[1.0], noise_prob=0.0, telephone_prob=0.0, gain_db=0.0)
    feats = training_features(task.store, paths, generator, Augmenter(identity),
                              [[1.0]] * len(paths))
    assert all(torch.equal(f, fbank(load_audio(p))) for f, p in zip(feats, paths))
    torch.testing.assert_close(feats[0], task.store.get(paths[0]), atol=0.02, rtol=0.002)


@pytest.mark.parametrize("override, key", [
    ("augment.probability=0.5", "augment.probability"),
    ("augment.prob=often", "augment.prob"),
    ("augment.prob=1.5", "augment.prob"),
    ("augment.telephone_prob=-0.1", "augment.telephone_prob"),
    ("augment.speeds=0.9", "augment.speeds"),
    ("augment.speeds=[]", "augment.speeds"),
    ("augment.speeds=[0.9,3.0]", "augment.speeds"),
    ("augment.noise_kinds=[white,brown]", "augment.noise_kinds"),
    ("augment.snr_min=30", "augment.snr_min"),
    ("augment.gain_db=-3", "augment.gain_db"),
    ("augment.telephone_mu_law=maybe", "augment.telephone_mu_law"),
])
def test_bad_augment_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TINY, [override])


def test_augmented_training_resumes_exactly(two_utterances, tmp_path):
    common = ["--config", str(TINY), "--data", str(two_utterances)]
    straight, split = tmp_path / "straight", tmp_path / "split"
    # SpecAugment off (its resume is tested in test_compressor_training): the generator feeds the
    # augmentation alone, so a run without augmentation differs only by it
    extra = ["data.max_frames=600", "features.spec_augment=false", "augment.prob=0.8", "augment.noise_prob=0.7",
             "augment.telephone_prob=0.5", "augment.speeds=[0.9,1.0,1.1]"]
    assert main(["train", "ctc", *common, "--out", str(straight), "train.max_steps=8", *extra]) == 0
    assert main(["train", "ctc", *common, "--out", str(split), "train.max_steps=8",
                 "train.max_minutes=0.000001", *extra]) == 0  # stops (and checkpoints) after step 1
    assert (split / "latest").read_text().strip() == "step-000001"
    assert main(["train", "ctc", "--out", str(split), "--resume", "train.max_minutes=0"]) == 0
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = tmp_path / "plain"  # the augmentation did reach the loss
    assert main(["train", "ctc", *common, "--out", str(plain), "train.max_steps=8",
                 *extra[:2]]) == 0
    assert not all(torch.equal(a[k], v) for k, v in weights(plain).items())
