import pytest
import torch

from speechllama import ctc_compress
from speechllama.models.ctc_compressor import subsampled_lengths


def one_hot_logits(labels: list[list[int]], vocab: int = 4) -> torch.Tensor:
    lab = torch.tensor(labels)
    return torch.nn.functional.one_hot(lab, vocab).float()  # (B, T, V)


def ramp(b: int, t: int, c: int = 2) -> torch.Tensor:
    return torch.arange(b * t * c, dtype=torch.float32).view(b, t, c)


def test_remove_blank_keeps_exactly_non_blank_frames():
    hidden = ramp(1, 7)
    logits = one_hot_logits([[0, 1, 1, 0, 2, 0, 3]])
    out, lengths = ctc_compress(hidden, logits, torch.tensor([7]), "remove_blank")
    assert lengths.tolist() == [4]
    torch.testing.assert_close(out[0], hidden[0, [1, 2, 4, 6]])


def test_average_means_each_run_including_blank_runs():
    hidden = ramp(1, 7)
    logits = one_hot_logits([[0, 1, 1, 0, 0, 2, 2]])
    out, lengths = ctc_compress(hidden, logits, torch.tensor([7]), "average")
    assert lengths.tolist() == [4]
    h = hidden[0]
    expected = torch.stack([h[0], h[1:3].mean(0), h[3:5].mean(0), h[5:7].mean(0)])
    torch.testing.assert_close(out[0], expected)


def test_none_is_identity():
    hidden, logits = ramp(2, 5), one_hot_logits([[0] * 5, [1] * 5])
    lengths = torch.tensor([5, 3])
    out, new = ctc_compress(hidden, logits, lengths, "none")
    assert out is hidden and new is lengths


def test_padded_batch_ignores_frames_past_length_and_zero_pads():
    hidden = ramp(2, 6)
    # row 1 has 3 valid frames; its padded frames carry labels that must not count
    logits = one_hot_logits([[1, 1, 2, 2, 3, 3], [1, 0, 2, 3, 3, 1]])
    lengths = torch.tensor([6, 3])
    out, new = ctc_compress(hidden, logits, lengths, "average")
    assert new.tolist() == [3, 3] and out.shape == (2, 3, 2)
    torch.testing.assert_close(out[1], hidden[1, :3])
    out, new = ctc_compress(hidden, logits, lengths, "remove_blank")
    assert new.tolist() == [6, 2] and out.shape == (2, 6, 2)
    torch.testing.assert_close(out[1, :2], hidden[1, [0, 2]])
    assert torch.count_nonzero(out[1, 2:]) == 0


@pytest.mark.parametrize("mode", ["average", "remove_blank"])
def test_all_blank_row_keeps_one_mean_vector(mode):
    hidden = ramp(2, 5)
    logits = one_hot_logits([[0, 0, 0, 0, 1], [1, 2, 1, 2, 1]])
    out, new = ctc_compress(hidden, logits, torch.tensor([4, 5]), mode)
    assert new[0] == 1
    torch.testing.assert_close(out[0, 0], hidden[0, :4].mean(0))
    assert torch.count_nonzero(out[0, 1:]) == 0


def test_gradients_flow_and_unknown_mode_is_an_error():
    hidden = ramp(1, 4).requires_grad_()
    logits = one_hot_logits([[1, 1, 0, 2]])
    out, _ = ctc_compress(hidden, logits, torch.tensor([4]), "average")
    out.sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown compression mode"):
        ctc_compress(hidden, logits, torch.tensor([4]), "mean")


@pytest.mark.parametrize("frames,expected", [(6, 0), (7, 1), (10, 1), (11, 2), (100, 24)])
def test_subsampled_lengths(frames, expected):
    assert int(subsampled_lengths(torch.tensor(frames))) == expected
