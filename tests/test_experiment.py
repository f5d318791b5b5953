"""The paper experiment: parameter ratio of the two from-scratch systems, and a toy-scale run."""

import json
import random
import re

import pytest
from conftest import TWO_UTTERANCES, write_corpus

from speechllama.config import load_config


def _scratch_texts(n: int = 1000) -> list[str]:
    """Target texts of pseudo-words, enough for the from-scratch tokenizer to reach its full
    llm.scratch_vocab (1,000 pieces), as it does on the demo corpus."""
    rng = random.Random(0)
    syllables = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    return [" ".join(rng.choice(words) for _ in range(8)) for _ in range(n)]


def test_default_sizes_give_the_papers_60_to_100_parameter_ratio(tmp_path):
    """The two from-scratch systems as `speechllama experiment paper` trains them (its stage-1 and
    stage-2 settings and SYSTEMS overrides, built by models/build.py as training and loading
    build them), counted as its report counts them (evaluate.parameter_counts), and the ratio
    claim (5) of its table prints."""
    from speechllama.evaluation.evaluate import parameter_counts
    from speechllama.models.build import build_compressor, build_speech_llm
    from speechllama.models.llm import create_scratch_llm
    from speechllama.recipes.budgets import STAGE1, STAGE2
    from speechllama.recipes.paper import SYSTEMS, claims

    stage1 = load_config(None, STAGE1 + ["compressor.char_vocab_size=90"])  # the demo's characters
    compressor, texts = build_compressor(stage1), _scratch_texts()
    counts, kinds = {}, {}
    for system in ("decoder-only-scratch", "encoder-decoder"):
        cfg = load_config(None, STAGE2 + SYSTEMS[system])
        cfg.compressor = stage1.compressor  # stage 2 takes its compressor's (tasks/speech_llm.py)
        # as tasks/speech_llm.py makes it in the run's llm-init folder: the target-side tokenizer
        # (both systems) and the from-scratch LLaMA (the decoder-only one), of llm.scratch_*
        lc, seq2seq = cfg.llm, cfg.speech_llm.system == "encoder_decoder"
        lc.path = str(create_scratch_llm(tmp_path / system / "llm-init", texts, lc.scratch_hidden,
                                         lc.scratch_layers, lc.scratch_heads, lc.scratch_ff,
                                         lc.scratch_vocab, cfg.train.seed, with_model=not seq2seq))
        model, tokenizer = build_speech_llm(cfg, compressor)
        assert len(tokenizer) == lc.scratch_vocab
        counts[system], kinds[system] = parameter_counts(model), type(model).__name__
    assert kinds == {"decoder-only-scratch": "SpeechLLM", "encoder-decoder": "EncoderDecoder"}
    assert counts["encoder-decoder"]["trainable"] == counts["encoder-decoder"]["total"]
    decoder_only, encoder_decoder = (counts[s]["total"] for s in counts)
    assert 0.54 <= decoder_only / encoder_decoder <= 0.66, counts  # the paper's ~60 : 100
    # what the experiment's table says about it: claim (5) with the ratio, not refuted by size
    results = {s: {"macro_bleu": None, "trainable": 0, "total": 0}
               for s in ("speech-llama", "remove-blank", "causal-mask", "no-lora")}
    results |= {s: {"macro_bleu": None, **c} for s, c in counts.items()}
    (_, ok, why), = [c for c in claims(results, tmp_path) if c[0].startswith("(5)")]
    ratio = decoder_only / encoder_decoder
    assert re.search(r"(\d\.\d\d)x the parameters$", why)[1] == f"{ratio:.2f}"
    assert ok == "inconclusive"  # no BLEU yet; "not reproduced" if the sizes broke the ratio


@pytest.mark.slow
def test_paper_experiment_runs_every_system_and_writes_the_table(tmp_path):
    from speechllama.cli import main

    corpus = tmp_path / "corpus"
    four = TWO_UTTERANCES + [("u3", "drei eins", [700, 300, 900]), ("u4", "zwei vier", [500, 1500])]
    for split in ("train", "dev", "test"):
        write_corpus(corpus, four, split)
    # max_frames=200: one or two recordings per batch (fbank 100 frames/s, the Whisper ear's 50),
    # so stage 1's two DDP ranks get a batch each
    tiny = ["train.max_steps=2", "train.log_every=1", "data.max_frames=200",
            "compressor.d_model=32", "compressor.ff_dim=64", "compressor.conv_channels=4",
            "speech_llm.encoder_dim=32", "speech_llm.encoder_ff=64", "speech_llm.encoder_layers=1",
            "llm.scratch_hidden=32", "llm.scratch_ff=64", "llm.scratch_layers=1",
            "llm.scratch_vocab=40", "seq2seq.decoder_dim=32", "seq2seq.decoder_ff=64",
            "seq2seq.decoder_layers=1", "seq2seq.extra_encoder_layers=1"]
    args = ["experiment", "paper", "--data", str(corpus), "--out", str(tmp_path / "results"),
            "--per-group", "1", "--no-whisper", "--steps", "3", *tiny]
    assert main(args) == 0
    table = (tmp_path / "results" / "paper-table.md").read_text()
    results = json.loads((tmp_path / "results" / "paper-table.json").read_text())
    assert set(results) == {"speech-llama", "remove-blank", "causal-mask", "no-lora",
                            "no-compression", "decoder-only-scratch", "encoder-decoder", "zero-audio",
                            "whisper-ear"}
    verdicts = [line for line in table.splitlines() if line.startswith("- (")]
    assert len(verdicts) == 5 and (tmp_path / "results" / "paper-table.png").exists()
    # two-step toy systems have learned nothing: no claim may be called reproduced
    assert all("**inconclusive**" in line for line in verdicts[:4]), verdicts
    assert "Reproduce: `speechllama experiment paper --data" in table and "zero-audio control" in table
    assert results["zero-audio"]["trainable"] == results["speech-llama"]["trainable"]
    # --steps: every system trains exactly that many stage-2 steps (stage 1 keeps max_steps=2)
    runs = tmp_path / "results" / "paper-table-runs"
    assert (runs / "ctc" / "step-000002").is_dir()
    assert (runs / "ctc-whisper-ear" / "step-000002").is_dir()  # the backbone row's own stage 1
    assert all((runs / s / "step-000003").is_dir() for s in results)
    lora, no_lora = results["speech-llama"], results["no-lora"]
    assert lora["trainable"] > no_lora["trainable"] and lora["total"] > no_lora["total"]
    share = {k: v["trainable"] / v["total"] for k, v in results.items()}
    assert share["encoder-decoder"] == 1.0  # trained from scratch: every weight
    assert share["decoder-only-scratch"] > share["speech-llama"]  # its whole LLM trains


def test_paper_experiment_without_the_whisper_extra_fails_before_training(tmp_path, monkeypatch,
                                                                          capsys):
    import importlib.util

    from speechllama.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "faster_whisper" else real(name, *a))
    corpus = tmp_path / "corpus"
    for split in ("train", "dev", "test"):
        write_corpus(corpus, TWO_UTTERANCES, split)
    assert main(["experiment", "paper", "--data", str(corpus), "--out", str(tmp_path / "r")]) == 2
    assert '.[bench]' in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_claim_verdicts_need_learned_systems_and_a_significant_difference(tmp_path):
    from speechllama.evaluation.statistics import verdict

    refs = [f"the number {i} is not {i + 1} today" for i in range(40)]
    good = [{"id": f"u{i}-st", "task": "st", "ref": r, "hyp": r} for i, r in enumerate(refs)]
    bad = [dict(g, hyp="something else entirely") for g in good]
    for name, rows in (("a", good), ("b", bad), ("c", good)):
        (tmp_path / f"{name}-test.hyp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {"a": {"macro_bleu": 100.0}, "b": {"macro_bleu": 0.0}, "c": {"macro_bleu": 100.0},
               "z": {"macro_bleu": 0.4}, "y": {"macro_bleu": 0.2}}
    assert verdict(results, tmp_path, "a", "b")[0] == "reproduced"
    assert verdict(results, tmp_path, "b", "a")[0] == "not reproduced"
    assert verdict(results, tmp_path, "a", "c")[0] == "inconclusive"  # identical outputs
    assert verdict(results, tmp_path, "a", "c", same=True)[0] == "reproduced"
    assert verdict(results, tmp_path, "z", "y")[0] == "inconclusive"  # neither learned anything
    # with a zero-audio control, the better system must beat it too
    (tmp_path / "zero-audio-test.hyp.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in good))
    assert verdict(results | {"zero-audio": {"macro_bleu": 100.0}}, tmp_path, "a", "b")[0] == \
        "inconclusive"
    (tmp_path / "zero-audio-test.hyp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    assert verdict(results | {"zero-audio": {"macro_bleu": 0.0}}, tmp_path, "a", "b")[0] == \
        "reproduced"


def test_whisper_digits_are_spelled_out_like_the_number_references():
    from speechllama.evaluation.whisper_peer import spell_numbers

    assert spell_numbers("1938", "en", "year") == "nineteen thirty-eight"
    assert spell_numbers("2,013.", "en") == "two thousand and thirteen"
    assert spell_numbers("45th", "en", "ordinal") == "forty-fifth"
    assert spell_numbers("Das sind 175", "de") == "Das sind einhundertfünfundsiebzig"
    assert spell_numbers("no digits here", "fr") == "no digits here"
