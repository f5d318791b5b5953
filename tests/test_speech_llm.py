"""Stage 2 on tiny parts: a tiny compressor, a tiny random LLaMA, two utterances."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import CORPUS_WORDS, TINY, TWO_UTTERANCES, tiny_llm_folder, tone_sequence, train_on_another_llms_labels

from speechllama import load
from speechllama.checkpoint import CheckpointError
from speechllama.cli import main
from speechllama.evaluation.evaluate import evaluate_model
from speechllama.inference.api import features_of
from speechllama.models.build import load_speech_llm
from speechllama.models.decode import DecodingOptions


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(corpus folder, stage-2 run folder, tiny LLM folder) after training both stages."""
    from conftest import train_two_stages

    return train_two_stages(tmp_path_factory.mktemp("stage2"), 150, 250)


def test_overfits_two_utterances_in_both_tasks(trained):
    corpus, run, _ = trained
    report = evaluate_model(run, corpus / "dev.jsonl", out=run / "eval")
    hyps = [json.loads(x) for x in (run / "eval.hyp.jsonl").read_text().splitlines()]
    assert all(h["hyp"] == h["ref"] for h in hyps), hyps
    assert report["macro"]["asr_wer_all"] == 0.0
    assert report["compressor_asr"]["asr_wer_all"] == 0.0  # its compressor, on the same ASR rows
    assert "greedy transcript of the same ASR rows" in (run / "eval.md").read_text()
    assert report["macro"]["st_chrf_all"] == pytest.approx(100.0)  # BLEU: no 4-grams in 2-3 words
    assert (run / "eval.md").exists()


def test_save_load_identity_and_batched_equals_single(trained):
    corpus, run, _ = trained
    a, b = load(run), load(run)
    waves = [str(corpus / "audio" / f"{uid}.wav") for uid, _, _ in TWO_UTTERANCES]
    assert a.transcribe(waves, src_lang="de") == b.transcribe(waves, src_lang="de")
    batched = a.translate(waves, src_lang="de")
    assert batched == [a.translate(w, src_lang="de") for w in waves]
    assert batched == ["EINS ZWEI DREI", "VIER FÜNF"]
    beam = a.translate(waves, src_lang="de", options=DecodingOptions(beam_size=3))
    assert beam == batched
    # the frozen LLM decodes with bf16 weights by default; float32 weights give the same text
    assert a.bundle.model.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    fp32 = load(run, dtype=torch.float32)
    assert fp32.bundle.model.llm.get_input_embeddings().weight.dtype == torch.float32
    assert fp32.translate(waves, src_lang="de") == batched
    assert fp32.transcribe(waves, src_lang="de") == a.transcribe(waves, src_lang="de")


def test_only_encoder_and_lora_are_trainable(trained):
    _, run, _ = trained
    bundle = load_speech_llm(run)
    model = bundle.model
    assert not any(p.requires_grad for p in model.compressor.parameters())
    names = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_wrong_base_llm_is_a_clear_error(trained, tmp_path):
    _, run, llm = trained
    other = tiny_llm_folder(tmp_path / "other", CORPUS_WORDS, hidden=48)
    cfg = (run / "config.yaml").read_text().replace(str(llm), str(other))
    latest = run / (run / "latest").read_text().strip()
    (latest / "config.yaml").write_text(cfg.replace(str(llm), str(other)))
    try:
        with pytest.raises(CheckpointError, match="weights hash"):
            load_speech_llm(run)
    finally:
        (latest / "config.yaml").write_text((run / "config.yaml").read_text())


def test_translate_cli_reports_bad_files_and_decodes_the_rest(trained, tmp_path, capsys):
    _, run, _ = trained
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    wave = tone_sequence(TWO_UTTERANCES[0][2])
    t16 = np.arange(len(wave)) / 16000
    t44 = np.arange(int(len(wave) * 44100 / 16000)) / 44100
    resampled = np.interp(t44, t16, wave)
    stereo = tmp_path / "stereo44k.flac"
    sf.write(stereo, np.stack([resampled, resampled], 1), 44100)
    code = main(["translate", str(empty), str(text), str(stereo), "--model", str(run),
                 "--src-lang", "de"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "empty.wav" in err and "notes.wav" in err
    assert out.strip().startswith(f"{stereo}\t") and len(out.strip().splitlines()) == 1
    assert features_of(str(stereo)).shape[1] == 80


def test_resume_gives_the_same_stage2_run(trained, tmp_path):
    corpus, run, llm = trained
    ctc = run.parent / "ctc"
    common = ["--config", str(TINY), "--data", str(corpus)]
    opts = ["train.max_steps=6", "speech_llm.dropout=0.1", "llm.lora_rank=2",
            "speech_llm.piece_prior=true", "speech_llm.match_embedding_scale=true",
            "augment.prob=0.8", "augment.noise_prob=0.7", "augment.telephone_prob=0.5"]
    straight, split = tmp_path / "a", tmp_path / "b"
    for out, extra in ((straight, []), (split, ["train.max_minutes=0.000001"])):
        assert main(["train", "speech-llm", *common, "--out", str(out), "--compressor", str(ctc),
                     "--llm", str(llm), *opts, *extra]) == 0
    assert main(["train", "speech-llm", "--out", str(split), "--resume", "train.max_minutes=0"]) == 0
    from safetensors.torch import load_file

    a = load_file(str(straight / "step-000006" / "model.safetensors"))
    b = load_file(str(split / "step-000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_decoder_only_from_scratch_overfits_and_exports(trained, tmp_path):
    """llm.init=scratch: a small random LLaMA with its own tokenizer, every weight trained."""
    from speechllama.checkpoint import latest_checkpoint
    from speechllama.recipes.demo import export_model

    corpus, run, _ = trained
    out = tmp_path / "scratch"
    assert main(["train", "speech-llm", "--config", str(TINY), "--data", str(corpus), "--out",
                 str(out), "--compressor", str(run.parent / "ctc"), "llm.init=scratch",
                 "llm.lora_rank=0", "llm.scratch_hidden=32", "llm.scratch_layers=2",
                 "llm.scratch_heads=2", "llm.scratch_ff=64", "llm.scratch_vocab=30",
                 "train.max_steps=200", "train.lr=0.005", "features.spec_augment=false"]) == 0
    model_dir = export_model(latest_checkpoint(out), tmp_path / "model")
    assert (model_dir / "llm" / "config.json").exists()
    model = load(model_dir)
    llm_params = sum(p.numel() for p in model.bundle.model.llm.parameters())
    trainable = sum(p.numel() for p in model.bundle.model.parameters() if p.requires_grad)
    assert trainable == llm_params + sum(p.numel() for p in model.bundle.model.encoder.parameters())
    waves = [str(corpus / "audio" / f"{uid}.wav") for uid, _, _ in TWO_UTTERANCES]
    assert model.transcribe(waves, src_lang="de") == ["eins zwei drei", "vier fünf"]
    assert model.translate(waves, src_lang="de") == load(model_dir).translate(waves, src_lang="de")


def test_encoder_decoder_baseline_overfits_decodes_with_cache_and_reloads(trained, tmp_path):
    """speech_llm.system=encoder_decoder: cross-attention decoder, same decoding code and API."""
    from speechllama.checkpoint import latest_checkpoint
    from speechllama.models.seq2seq import EncoderDecoder
    from speechllama.recipes.demo import export_model

    corpus, run, _ = trained
    out = tmp_path / "seq2seq"
    assert main(["train", "speech-llm", "--config", str(TINY), "--data", str(corpus), "--out",
                 str(out), "--compressor", str(run.parent / "ctc"),
                 "speech_llm.system=encoder_decoder", "seq2seq.extra_encoder_layers=1",
                 "seq2seq.decoder_dim=32", "seq2seq.decoder_layers=2", "seq2seq.decoder_heads=2",
                 "seq2seq.decoder_ff=64", "seq2seq.dropout=0.0", "llm.scratch_vocab=30",
                 "train.max_steps=500", "train.lr=0.003", "features.spec_augment=false"]) == 0
    model = load(export_model(latest_checkpoint(out), tmp_path / "model"))
    assert isinstance(model.bundle.model, EncoderDecoder)
    waves = [str(corpus / "audio" / f"{uid}.wav") for uid, _, _ in TWO_UTTERANCES]
    assert model.transcribe(waves, src_lang="de") == ["eins zwei drei", "vier fünf"]
    greedy = model.translate(waves, src_lang="de")
    assert greedy == [model.translate(w, src_lang="de") for w in waves]  # batched == one by one
    assert model.translate(waves, src_lang="de", options=DecodingOptions(beam_size=3)) == greedy
    # cached decoding == recomputing the whole prefix at every step
    bundle = model.bundle
    feats = bundle.cmvn(features_of(waves[0]))[None]
    lengths = torch.tensor([feats.shape[1]])
    before, after = model.prompter("st", "de", "en")
    cached = bundle.model.generate(feats, lengths, [before], [after], bundle.tokenizer.eos_token_id,
                                   DecodingOptions(no_repeat_ngram_size=0), torch.tensor([6]))[0]
    tokens = []
    for _ in range(len(cached)):
        memory, valid = bundle.model.encode_audio(feats, lengths)
        embeds, mask, text_valid, _ = bundle.model._inputs(memory, [before], [after + tokens])
        pos = (text_valid.long().cumsum(-1) - 1).clamp(min=0)
        logits = bundle.model.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                                      use_cache=False, memory=memory, memory_valid=valid).logits
        tokens.append(int(logits[0, -1].argmax()))
    assert tokens == cached


def test_llm_token_compressor_and_piece_prior_train_export_and_reload(trained, tmp_path):
    """compressor.labels=llm_tokens: the CTC labels are the LLM's tokens; stage 2 with the piece
    prior starts from their exact embeddings, and the exported model reloads identically."""
    from speechllama.checkpoint import latest_checkpoint
    from speechllama.evaluation.evaluate import evaluate_ctc
    from speechllama.models.build import load_compressor
    from speechllama.recipes.demo import export_model

    corpus, _, llm = trained
    common = ["--config", str(TINY), "--data", str(corpus), "--llm", str(llm)]
    assert main(["train", "ctc", *common, "--out", str(tmp_path / "ctc"), "train.max_steps=150",
                 "features.spec_augment=false", "compressor.labels=llm_tokens"]) == 0
    bundle = load_compressor(tmp_path / "ctc")
    assert (bundle.path / "ctc_vocab.json").exists() and not (bundle.path / "tokenizer.model").exists()
    assert bundle.tokenizer.vocab_size == 2 + 5  # blank, unk, the five transcript words
    assert evaluate_ctc(tmp_path / "ctc", corpus / "dev.jsonl")["macro_wer"] == 0.0

    assert main(["train", "speech-llm", *common, "--out", str(tmp_path / "s2"), "--compressor",
                 str(tmp_path / "ctc"), "train.max_steps=3", "speech_llm.piece_prior=true"]) == 0
    s2 = load_speech_llm(tmp_path / "s2").model
    table = s2.encoder.piece_embeds
    embed = s2.llm.get_input_embeddings().weight
    assert torch.equal(table[2:], embed[torch.tensor(bundle.tokenizer.llm_ids)].float())
    model_dir = export_model(latest_checkpoint(tmp_path / "s2"), tmp_path / "model")
    assert (model_dir / "ctc_vocab.json").exists()
    waves = [str(corpus / "audio" / f"{uid}.wav") for uid, _, _ in TWO_UTTERANCES]
    assert load(model_dir).transcribe(waves, src_lang="de") == load(tmp_path / "s2").transcribe(
        waves, src_lang="de")
    # LLM-token labels + normalised ASR targets (the default): transcripts decode jointly with CTC.
    # The compressor is exact (WER 0 above) while the LLM had 3 updates: at ctc_weight 1 the
    # search must spell the compressor's transcript in the LLM's tokens and stop at its end
    assert load(model_dir).options.ctc_weight == 0.5
    joint = load(model_dir, DecodingOptions(ctc_weight=1.0, ctc_candidates=len(CORPUS_WORDS)))
    assert joint.transcribe(waves, src_lang="de") == [text for _, text, _ in TWO_UTTERANCES]
    report = evaluate_model(model_dir, corpus / "dev.jsonl")
    assert report["decoding"]["ctc_weight"] == 0.5
    assert set(report["llm_alone_asr"]) == {"asr_wer_all", "asr_cer_all", "asr_wer_sentences",
                                            "asr_cer_sentences"}


def test_joint_ctc_decoding_needs_llm_token_labels(trained, capsys):
    """A compressor with sentencepiece labels cannot score LLM tokens: no joint decoding by default,
    and asking for it is a clear error."""
    corpus, run, _ = trained
    assert load(run).options.ctc_weight == 0.0
    with pytest.raises(ValueError, match="not the LLM's tokens"):
        load(run, DecodingOptions(ctc_weight=0.5))
    wave = str(corpus / "audio" / f"{TWO_UTTERANCES[0][0]}.wav")
    assert main(["transcribe", wave, "--model", str(run), "--ctc-weight", "0.5"]) != 0
    assert "joint CTC/LLM decoding" in capsys.readouterr().err


def test_output_vocab_is_saved_and_used(trained):
    """Trained over the restricted output vocabulary (the default): its tokens are the targets'
    and EOS (the tiny tokenizer has no byte tokens); decoding over the full vocabulary agrees on
    the overfit rows."""
    corpus, run, _ = trained
    model = load(run)
    vocab = model.bundle.model.vocab
    words = model.bundle.tokenizer.convert_ids_to_tokens(vocab.ids.tolist())
    assert set(words) == {"eins", "zwei", "drei", "vier", "fünf", "EINS", "ZWEI", "DREI", "VIER",
                          "FÜNF", "</s>"}
    waves = [str(corpus / "audio" / f"{uid}.wav") for uid, _, _ in TWO_UTTERANCES]
    full = DecodingOptions(full_vocab=True)
    assert model.translate(waves, src_lang="de", options=full) == ["EINS ZWEI DREI", "VIER FÜNF"]


def test_labels_of_another_llm_map_into_the_stage2_llm_by_text(trained, tmp_path):
    """compressor.label_llm: stage 1's labels are one LLM's tokens, stage 2 runs on another; the
    piece prior maps each label's text into the stage-2 LLM's embeddings, the model reloads
    (both LLMs found again), and joint CTC decoding is refused with the reason."""
    from speechllama.checkpoint import latest_checkpoint
    from speechllama.recipes.demo import export_model

    corpus, _, label_llm = trained
    run = train_on_another_llms_labels(corpus, label_llm, tmp_path, ctc_steps=20)
    bundle = load_speech_llm(latest_checkpoint(run))
    labels = bundle.ctc_tokenizer
    words = labels.llm_tokenizer.convert_ids_to_tokens(labels.llm_ids)
    ids = bundle.tokenizer.convert_tokens_to_ids(words)  # the same words in the other vocabulary
    embed = bundle.model.llm.get_input_embeddings().weight
    assert torch.equal(bundle.model.encoder.piece_embeds[2:], embed[torch.tensor(ids)].float())
    model = load(export_model(latest_checkpoint(tmp_path / "s2"), tmp_path / "model"))
    assert model.options.ctc_weight == 0.0
    with pytest.raises(ValueError, match="not the LLM's tokens"):
        load(tmp_path / "model", DecodingOptions(ctc_weight=0.5))


def test_text_mt_ceiling_is_the_frozen_llm_on_reference_transcripts(trained, capsys, tmp_path):
    """evaluate reports the text-MT ceiling of the ST rows: the model's own LLM with its LoRA off
    gives exactly what the base LLM alone gives from the reference transcripts; --no-ceiling
    skips it."""
    from speechllama.data import read_manifest
    from speechllama.evaluation.evaluate import text_mt_ceiling
    from speechllama.models.llm import load_llm

    corpus, run, llm = trained
    report = evaluate_model(run, corpus / "dev.jsonl")
    ceiling = report["text_mt_ceiling"]
    assert {(t["task"], t["pair"]) for t in ceiling["table"]} == {("st", "de-en")}
    assert ceiling["table"][0]["n"] == len(TWO_UTTERANCES)
    rows = read_manifest(corpus / "dev.jsonl")
    base, tok = load_llm(llm, lora_rank=0)
    base.eval()
    assert text_mt_ceiling(base, tok, "", rows) == ceiling  # the trained LoRA played no part
    trained_lora = load(run, dtype=torch.float32).bundle.model.llm
    assert any(p.abs().sum() > 0 for n, p in trained_lora.named_parameters() if "lora_B" in n)
    out = tmp_path / "qwen2.5-dev"  # a dot in --out is part of the name, not a suffix
    assert main(["evaluate", "--model", str(run), "--data", str(corpus / "dev.jsonl"),
                 "--no-ceiling", "--out", str(out)]) == 0
    assert "text-MT ceiling" not in capsys.readouterr().out.split("Macro averages")[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"qwen2.5-dev{e}" for e in (".hyp.jsonl", ".json", ".md")]


def test_llm_token_spans_start_as_the_transcripts_embeddings_and_reload(trained, tmp_path, capsys):
    """speech_llm.spans=llm_tokens: one audio vector per LLM token of the compressor's greedy
    transcript; with the gate at 0 they are exactly the LLM's embeddings of those tokens (a
    cascade), and the exported model reloads to the same outputs."""
    from speechllama.checkpoint import latest_checkpoint
    from speechllama.recipes.demo import export_model

    corpus, run, llm = trained
    out = tmp_path / "spans"
    assert main(["train", "speech-llm", "--config", str(TINY), "--data", str(corpus), "--llm",
                 str(llm), "--compressor", str(run.parent / "ctc"), "--out", str(out),
                 "train.max_steps=3", "speech_llm.spans=llm_tokens", "speech_llm.piece_prior=true",
                 "features.spec_augment=false"]) == 0
    bundle = load_speech_llm(out)
    model = bundle.model
    assert model.encoder.gate is not None and model.encoder.piece_embeds is None
    wave = str(corpus / "audio" / "u1.wav")
    feats = bundle.cmvn(features_of(wave, load(out)))[None]
    model.encoder.gate.data.zero_()
    with torch.no_grad():
        audio, n = model.encode_audio(feats, torch.tensor([feats.shape[1]]))
    ids = bundle.tokenizer(" eins zwei drei", add_special_tokens=False)["input_ids"]
    assert n.tolist() == [3]  # the compressor hears "eins zwei drei": three LLM tokens
    expected = model.llm.get_input_embeddings()(torch.tensor(ids)).float()
    torch.testing.assert_close(audio[0].float(), expected)
    # a config that cannot work is refused by name
    assert main(["train", "speech-llm", "--config", str(TINY), "--data", str(corpus), "--out",
                 str(tmp_path / "bad"), "--compressor", str(run.parent / "ctc"),
                 "speech_llm.spans=llm_tokens", "speech_llm.compression=none"]) != 0
    assert "speech_llm.spans" in capsys.readouterr().err
    model_dir = export_model(latest_checkpoint(out), tmp_path / "model")
    waves = [str(corpus / "audio" / f"{uid}.wav") for uid, _, _ in TWO_UTTERANCES]
    assert load(model_dir).translate(waves, src_lang="de") == load(out).translate(waves, src_lang="de")


def test_evaluation_says_which_audio_it_left_out(trained, tmp_path, capsys):
    """A row whose audio cannot be decoded is left out of the scores, and the evaluation says so on
    stderr (not only in the report's JSON)."""
    corpus, run, _ = trained
    rows = [json.loads(x) for x in (corpus / "dev.jsonl").read_text().splitlines()]
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really")
    rows.append({**rows[0], "id": "broken-asr", "audio": str(tmp_path / "broken.wav")})
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text("".join(json.dumps({**r, "audio": str(corpus / r["audio"])
                                            if not r["audio"].startswith("/") else r["audio"]}) + "\n"
                                for r in rows))
    report = evaluate_model(run, manifest, ceiling=False, llm_alone=False)
    assert len(report["skipped_audio"]) == 1
    assert "1 unreadable audio file(s) left out of the scores" in capsys.readouterr().err
