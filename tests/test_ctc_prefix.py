"""CTC prefix scores against brute-force enumeration, and joint CTC/LLM beam search."""

import itertools
import math

import pytest
import torch
from test_decode import V, make_prefix, model, row  # noqa: F401  (model: a fixture)

from speechllama.models.ctc_prefix import CTCPrefixScorer, llm_to_ctc_map
from speechllama.models.decode import DecodingOptions, generate
from speechllama.text import collapse_ctc


def brute_force(log_probs: torch.Tensor, length: int, prefix: list[int], complete: bool) -> float:
    """log P of all CTC paths (over the first ``length`` frames) whose collapsed labels start with
    ``prefix`` (or equal it, when ``complete``)."""
    total = 0.0
    for path in itertools.product(range(log_probs.shape[1]), repeat=length):
        labels = collapse_ctc(path)
        if labels == prefix if complete else labels[:len(prefix)] == prefix:
            total += math.exp(sum(float(log_probs[t, c]) for t, c in enumerate(path)))
    return math.log(total) if total > 0 else -math.inf


def test_prefix_and_end_scores_equal_brute_force_over_a_padded_batch():
    torch.manual_seed(0)
    T, C = 5, 4
    log_probs = torch.randn(2, T, C).log_softmax(-1)
    lengths = torch.tensor([5, 4])  # row 1 is padded: its last frame must not count
    token_map = torch.tensor([1, 2, 3, 2, 1, 0])  # LLM token -> CTC label; token 5 is the end
    eos = [5]
    scorer = CTCPrefixScorer(log_probs, lengths, token_map, weight=1.0, candidates=5)
    scorer.start(1)
    llm = torch.zeros(2, 6)  # weight 1: the increments are CTC score differences alone
    prefixes = [[], []]
    for tokens in ([1, 2], [1, 1], [3, 0]):  # token 3 maps to label 2 again: a repeat after 1
        out = scorer.adjust(llm, eos)
        for b in range(2):
            for token in range(5):
                want = brute_force(log_probs[b], int(lengths[b]), prefixes[b] + [int(token_map[token])], False)
                assert float(out[b, token] + scorer.score[b]) == pytest.approx(want, abs=1e-4)
            end = brute_force(log_probs[b], int(lengths[b]), prefixes[b], True)
            assert float(out[b, 5] + scorer.score[b]) == pytest.approx(end, abs=1e-4)
        scorer.select(torch.tensor([0, 1]), torch.tensor(tokens))
        prefixes = [p + [int(token_map[t])] for p, t in zip(prefixes, tokens)]


def test_only_the_llm_candidates_and_the_end_are_scored():
    log_probs = torch.randn(1, 6, 5).log_softmax(-1)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([6]), torch.arange(8) % 5, weight=0.5, candidates=2)
    scorer.start(1)
    llm = torch.tensor([[0.0, -1.0, -5.0, -0.5, -7.0, -9.0, -3.0, -2.0]]).log_softmax(-1)
    out = scorer.adjust(llm, [6])
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [0, 3, 6]
    with pytest.raises(RuntimeError, match="not scored"):
        scorer.select(torch.tensor([0]), torch.tensor([1]))


def test_bad_weight_and_candidates_are_clear_errors():
    lp = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match="ctc_weight"):
        CTCPrefixScorer(lp, torch.tensor([3]), torch.arange(4), weight=0.0)
    with pytest.raises(ValueError, match="ctc_candidates"):
        CTCPrefixScorer(lp, torch.tensor([3]), torch.arange(4), weight=0.5, candidates=0)
    with pytest.raises(ValueError, match="ctc_weight"):
        generate(None, torch.zeros(1, 2, 4), torch.zeros(1, 1, 2, 2), torch.ones(1, 2, dtype=torch.bool),
                 0, DecodingOptions(ctc_weight=1.5))


def peaked(labels_per_row: list[list[int]], T: int, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC log-posteriors that put ~all mass on one path per row: label, blank, label, blank, ..."""
    lp = torch.full((len(labels_per_row), T, C), -20.0)
    lp[:, :, 0] = 0.0
    lengths = []
    for b, labels in enumerate(labels_per_row):
        for i, c in enumerate(labels):
            lp[b, 2 * i, 0] = -20.0
            lp[b, 2 * i, c] = 0.0
        lengths.append(max(2 * len(labels) + 1, 3))
    return lp.log_softmax(-1), torch.tensor(lengths)


@pytest.mark.parametrize("beam", [1, 3])
def test_joint_decoding_follows_a_confident_ctc_and_batches_like_single_rows(model, beam):  # noqa: F811
    """With a near-certain CTC path and ctc_weight 0.9, the search spells that path in LLM tokens
    and stops at its end, whatever the (random) LLM prefers; a batch decodes as its rows alone."""
    llm_ids = list(range(10, 30))  # the LLM tokens that are CTC labels 2..21
    token_map = llm_to_ctc_map(V, llm_ids)
    want = [[3, 5, 5, 9], [7, 2], [4]]  # CTC labels; 5 5 is a true repeat (two tokens)
    lp, lengths = peaked(want, 12, 22)
    prefix = make_prefix([7, 5, 6])
    eos = 63
    options = DecodingOptions(beam_size=beam, max_new_tokens=10, no_repeat_ngram_size=0,
                              ctc_weight=0.9, ctc_candidates=V - 1)
    out = generate(model, *prefix, eos, options, scorer=CTCPrefixScorer(lp, lengths, token_map, 0.9, V - 1))
    assert out == [[llm_ids[c - 2] for c in labels] for labels in want]
    for b in range(3):
        alone = generate(model, *row(prefix, b), eos, options,
                         scorer=CTCPrefixScorer(lp[b:b + 1], lengths[b:b + 1], token_map, 0.9, V - 1))
        assert alone == [out[b]]


def test_joint_decoding_skips_rows_without_budget(model):  # noqa: F811
    token_map = llm_to_ctc_map(V, range(10, 30))
    lp, lengths = peaked([[3, 4], [5]], 8, 22)
    prefix = make_prefix([5, 6])
    options = DecodingOptions(max_new_tokens=10, ctc_weight=0.9, ctc_candidates=V - 1)
    out = generate(model, *prefix, 63, options, max_new=torch.tensor([0, 10]),
                   scorer=CTCPrefixScorer(lp, lengths, token_map, 0.9, V - 1))
    assert out == [[], [13]]
