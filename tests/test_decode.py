import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from speechllama.models import decode
from speechllama.models.decode import DecodingOptions, generate, token_budget
from speechllama.models.llm import audio_text_mask

V, C = 64, 32
NO_EOS = -1  # an id argmax never returns: rows run to their cap


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=V, hidden_size=C, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def make_prefix(lengths, seed=0, audio_len=3):
    """Left-padded random prefixes; row b has `lengths[b]` valid vectors, audio from its 2nd vector on."""
    g = torch.Generator().manual_seed(seed)
    B, P = len(lengths), max(lengths)
    embeds = torch.zeros(B, P, C)
    valid = torch.zeros(B, P, dtype=torch.bool)
    for b, n in enumerate(lengths):
        embeds[b, P - n:] = torch.randn(n, C, generator=g)
        valid[b, P - n:] = True
    start = torch.tensor([P - n + 1 for n in lengths])
    mask = audio_text_mask(start, torch.full((B,), audio_len), valid, causal_audio=False)
    return embeds, mask, valid


def row(prefix, b):
    """Row b of a batch on its own, without its padding."""
    embeds, mask, valid = prefix
    keep = valid[b]
    return embeds[b:b + 1, keep], mask[b:b + 1][:, :, keep][:, :, :, keep], valid[b:b + 1, keep]


def full_forward(model, prefix, generated):
    """Uncached logits (B, V) after the prefix plus `generated` (B, t) tokens."""
    embeds, mask, valid = prefix
    B, P, _ = embeds.shape
    t = generated.shape[1]
    x = torch.cat([embeds, model.get_input_embeddings()(generated)], dim=1)  # (B, P + t, C)
    valid_all = torch.cat([valid, torch.ones(B, t, dtype=torch.bool)], dim=1)
    T = P + t
    allowed = torch.ones(T, T, dtype=torch.bool).tril() & valid_all[:, None, :]  # (B, T, T)
    allowed[:, :P, :P] = mask[:, 0] == 0
    allowed |= torch.eye(T, dtype=torch.bool)
    full_mask = torch.zeros(B, 1, T, T).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    position_ids = (valid_all.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(inputs_embeds=x, attention_mask=full_mask, position_ids=position_ids).logits[:, -1]


def greedy_uncached(model, prefix, eos_id, steps):
    """Reference greedy decoding recomputing the whole sequence each step (no no-repeat guard)."""
    B = prefix[0].shape[0]
    generated = torch.zeros(B, 0, dtype=torch.long)
    for _ in range(steps):
        nxt = full_forward(model, prefix, generated).argmax(-1)  # (B,)
        generated = torch.cat([generated, nxt[:, None]], dim=1)
    out = []
    for seq in generated.tolist():
        out.append(seq[: seq.index(eos_id)] if eos_id in seq else seq)
    return out


def has_repeated_ngram(seq, n):
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


PLAIN = DecodingOptions(max_new_tokens=12, no_repeat_ngram_size=0)


def test_cached_greedy_equals_uncached(model):
    prefix = make_prefix([7, 5, 9])
    for eos_id in (NO_EOS, 5):
        cached = generate(model, *prefix, eos_id=eos_id, options=PLAIN)
        assert cached == greedy_uncached(model, prefix, eos_id, steps=12)
    assert all(len(seq) == 12 for seq in generate(model, *prefix, eos_id=NO_EOS, options=PLAIN))


def test_batched_equals_rows_alone(model):
    prefix = make_prefix([7, 4, 9, 6], seed=1)
    for options in (PLAIN, DecodingOptions(beam_size=3, max_new_tokens=8, no_repeat_ngram_size=4)):
        batched = generate(model, *prefix, eos_id=7, options=options)
        alone = [generate(model, *row(prefix, b), eos_id=7, options=options)[0] for b in range(4)]
        assert batched == alone


def test_deterministic(model):
    prefix = make_prefix([6, 8], seed=2)
    options = DecodingOptions(beam_size=4, max_new_tokens=10)
    first = generate(model, *prefix, eos_id=3, options=options)
    assert generate(model, *prefix, eos_id=3, options=options) == first


def test_beam_size_one_is_greedy(model):
    prefix = make_prefix([7, 5, 9], seed=3)
    caps = torch.tensor([12, 12, 12])
    for eos_id in (NO_EOS, 9, 20):
        scorer = decode._Scorer(model, None)
        greedy = decode._greedy(scorer, *prefix, {eos_id}, DecodingOptions(), caps)
        beam = decode._beam_search(scorer, *prefix, {eos_id}, DecodingOptions(beam_size=1), caps)
        assert beam == greedy


def test_beam_scores_match_uncached_scores(model, monkeypatch):
    """Every finished hypothesis carries the sum log-prob a recompute gives: the cache was reordered right."""
    rows = []
    original = decode._BeamRow.best
    monkeypatch.setattr(decode._BeamRow, "best", lambda self, lp: (rows.append(self), original(self, lp))[1])
    prefix = make_prefix([7, 5, 9], seed=4)
    eos_id = 11
    options = DecodingOptions(beam_size=4, max_new_tokens=20, no_repeat_ngram_size=0)
    generate(model, *prefix, eos_id=eos_id, options=options)
    assert len(rows) == 3
    for b, state in enumerate(rows):
        assert state.finished
        for tokens, score, ended in state.finished:
            targets = tokens + [eos_id] if ended else tokens
            generated = torch.tensor([targets[:-1]], dtype=torch.long)
            expected = 0.0
            for i, target in enumerate(targets):
                logits = full_forward(model, row(prefix, b), generated[:, :i])
                expected += F.log_softmax(logits[0], -1)[target].item()
            assert score == pytest.approx(expected, abs=1e-3)


def test_beam_is_exhaustive_with_full_width(model):
    """With beam_size = vocabulary and 2 tokens allowed, beam search finds the best of all sequences."""
    prefix = row(make_prefix([6], seed=5), 0)
    eos_id = 1
    options = DecodingOptions(beam_size=V, max_new_tokens=2, length_penalty=0.0, no_repeat_ngram_size=0)
    found = generate(model, *prefix, eos_id=eos_id, options=options)[0]

    first = F.log_softmax(full_forward(model, prefix, torch.zeros(1, 0, dtype=torch.long))[0], -1)  # (V,)
    best = first[eos_id].item()  # the empty output
    for a in range(V):
        if a != eos_id:  # after token a: either EOS, or any second token (cut at the cap)
            second = F.log_softmax(full_forward(model, prefix, torch.tensor([[a]]))[0], -1)
            best = max(best, first[a].item() + second.max().item())
    got = first[eos_id].item() if not found else first[found[0]].item()
    if len(found) == 1:
        got += F.log_softmax(full_forward(model, prefix, torch.tensor([found]))[0], -1)[eos_id].item()
    elif len(found) == 2:
        got += F.log_softmax(full_forward(model, prefix, torch.tensor([found[:1]]))[0], -1)[found[1]].item()
    assert got == pytest.approx(best, abs=1e-4)


def test_eos_stops_a_row(model):
    prefix = make_prefix([7, 5, 9], seed=6)
    free = generate(model, *prefix, eos_id=NO_EOS, options=PLAIN)
    eos_id = free[1][4]  # the 5th token of row 1 becomes the EOS
    stopped = generate(model, *prefix, eos_id=eos_id, options=PLAIN)
    for b in range(3):
        expected = free[b][: free[b].index(eos_id)] if eos_id in free[b] else free[b]
        assert stopped[b] == expected
    assert len(stopped[1]) <= 4


def test_no_repeat_ngram_guard(model):
    prefix = make_prefix([5, 8, 6, 7], seed=7)
    options = DecodingOptions(max_new_tokens=60, no_repeat_ngram_size=0)
    loose = generate(model, *prefix, eos_id=NO_EOS, options=options)
    assert any(has_repeated_ngram(seq, 4) for seq in loose)  # the random model does loop
    for beam_size in (1, 3):
        options = DecodingOptions(beam_size=beam_size, max_new_tokens=60, no_repeat_ngram_size=4)
        for seq in generate(model, *prefix, eos_id=NO_EOS, options=options):
            assert not has_repeated_ngram(seq, 4)


def test_per_row_caps(model):
    prefix = make_prefix([7, 5, 9], seed=8)
    for beam_size in (1, 3):
        options = DecodingOptions(beam_size=beam_size, max_new_tokens=6)
        out = generate(model, *prefix, eos_id=NO_EOS, options=options, max_new=torch.tensor([3, 0, 20]))
        assert [len(seq) for seq in out] == [3, 0, 6]


def test_token_budget():
    options = DecodingOptions(max_new_tokens=50, max_tokens_per_second=8.0)
    assert token_budget(torch.tensor([0.0, 1.0, 1.01, 30.0]), options).tolist() == [4, 12, 13, 50]
    assert token_budget(torch.tensor([1.0]), DecodingOptions(max_tokens_per_second=0)).tolist() == [128]


@pytest.mark.parametrize("bad", [
    dict(beam_size=0), dict(max_new_tokens=-1), dict(max_tokens_per_second=-1.0),
    dict(max_tokens_per_second=math.nan), dict(length_penalty=math.inf), dict(no_repeat_ngram_size=-2),
])
def test_invalid_options(model, bad):
    with pytest.raises(ValueError):
        generate(model, *make_prefix([3]), eos_id=0, options=DecodingOptions(**bad))


def test_right_padding_is_rejected(model):
    embeds, mask, valid = make_prefix([5, 3])
    with pytest.raises(ValueError, match="LEFT-padded"):
        generate(model, embeds, mask, valid.flip(1), eos_id=0)
