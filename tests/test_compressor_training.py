"""Stage 1 end to end on tiny data: overfit, save/load identity, resume identity, DDP."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from speechllama.cli import main
from speechllama.config import load_config
from speechllama.evaluation.evaluate import evaluate_ctc
from speechllama.models.build import build_compressor, load_compressor


def weights(run_dir):
    latest = (run_dir / "latest").read_text().strip()
    return load_file(str(run_dir / latest / "model.safetensors"))


def test_padding_invariance():
    cfg = load_config(TINY)
    torch.manual_seed(0)
    model = build_compressor(cfg).eval()
    a, b = torch.randn(1, 90, 80), torch.randn(1, 57, 80)
    batch = torch.zeros(2, 90, 80)
    batch[0], batch[1, :57] = a[0], b[0]
    hidden, logits, lengths = model(batch, torch.tensor([90, 57]))
    h_b, l_b, n_b = model(b, torch.tensor([57]))
    assert lengths.tolist() == [21, 13] and n_b.tolist() == [13]
    torch.testing.assert_close(hidden[1, :13], h_b[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, :13], l_b[0], atol=1e-5, rtol=1e-5)


def test_tiny_model_overfits_two_utterances_and_reloads_identically(two_utterances, tmp_path):
    run = tmp_path / "run"
    overrides = ["train.max_steps=150", "features.spec_augment=false"]
    assert main(["train", "ctc", "--config", str(TINY), "--data", str(two_utterances),
                 "--out", str(run), *overrides]) == 0
    report = evaluate_ctc(run, two_utterances / "dev.jsonl", progress=False)
    assert report["macro_cer"] == 0.0, report["examples"]
    # save -> load gives identical outputs
    bundle1, bundle2 = load_compressor(run), load_compressor(run)
    x = torch.randn(1, 120, 80)
    out1 = bundle1.model(bundle1.cmvn(x), torch.tensor([120]))[1]
    out2 = bundle2.model(bundle2.cmvn(x), torch.tensor([120]))[1]
    assert torch.equal(out1, out2)
    assert report["compression_ratio"]["remove_blank"] >= 1.0


def test_resume_gives_the_same_run(two_utterances, tmp_path):
    common = ["--config", str(TINY), "--data", str(two_utterances)]
    straight, split = tmp_path / "straight", tmp_path / "split"
    # dropout on and SpecAugment on: RNG states must be restored too
    extra = ["compressor.dropout=0.1", "data.max_frames=600"]
    assert main(["train", "ctc", *common, "--out", str(straight), "train.max_steps=12", *extra]) == 0
    assert main(["train", "ctc", *common, "--out", str(split), "train.max_steps=12",
                 "train.max_minutes=0.000001", *extra]) == 0  # stops (and checkpoints) after step 1
    first = (split / "latest").read_text().strip()
    assert first == "step-000001"
    assert main(["train", "ctc", "--out", str(split), "--resume", "train.max_minutes=0"]) == 0
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_unknown_override_is_a_clear_error(two_utterances, tmp_path, capsys):
    code = main(["train", "ctc", "--data", str(two_utterances), "--out", str(tmp_path / "r"),
                 "train.learning_rate=1"])
    assert code == 2
    assert "train.learning_rate" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_stay_in_sync(two_utterances, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29533", "-m", "speechllama", "train", "ctc", "--config", str(TINY),
           "--data", str(two_utterances), "--out", str(run), "train.max_steps=40",
           "data.max_frames=200", "train.log_every=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ranks hold identical parameters: yes" in proc.stderr
    import json
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] * 0.7, losses


def test_character_labels_are_one_per_character(two_utterances, tmp_path):
    """compressor.labels=chars (the default): one CTC label per character of the normalised text,
    and the tiny model still learns the two utterances."""
    run = tmp_path / "run"
    assert main(["train", "ctc", "--config", str(TINY), "--data", str(two_utterances), "--out", str(run),
                 "compressor.labels=chars", "train.max_steps=150", "features.spec_augment=false"]) == 0
    tokenizer = load_compressor(run).tokenizer
    pieces = [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)
              if not (tokenizer.sp.is_control(i) or tokenizer.sp.is_unknown(i))]
    assert pieces and all(len(p) == 1 for p in pieces), pieces
    assert len(tokenizer.encode("eins zwei")) == len("_eins_zwei")  # a word-start label before each word
    assert evaluate_ctc(run, two_utterances / "dev.jsonl", progress=False)["macro_cer"] == 0.0
    assert load_config(None).compressor.labels == "chars"
