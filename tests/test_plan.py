"""`speechllama plan`: counts on the LLaMA-7B shape, the activation estimate against a measured
peak, DDP/FSDP arithmetic and the command line."""

import io
import os
import re
from contextlib import redirect_stdout
from dataclasses import replace
from itertools import accumulate

import pytest
import torch
from conftest import ROOT, TINY, tiny_llm_folder

from speechllama.cli import main
from speechllama.config import load_config
from speechllama.training.plan import FIT_FRACTION, format_plan, make_plan

LLAMA_7B_PARAMS = 6.74e9  # LLaMA-7B (arXiv 2302.13971); 6,738,415,616 in its Hugging Face form
LORA_7B = 32 * 4 * (2 * 4096 + 4096 * 2)  # layers x (q, k, v, o) x (A: 2 x 4096 + B: 4096 x 2)


@pytest.fixture(scope="module")
def paper_output():
    """What `speechllama plan configs/paper-7b.yaml --gpus 8 --gpu-memory 24 --parallel fsdp`
    prints (the acceptance command; ~15 s here)."""
    out, cwd = io.StringIO(), os.getcwd()
    os.chdir(ROOT)  # llm.path is relative to the repository root, where commands run
    try:
        with redirect_stdout(out):
            assert main(["plan", "configs/paper-7b.yaml", "--gpus", "8", "--gpu-memory", "24",
                         "--parallel", "fsdp"]) == 0
    finally:
        os.chdir(cwd)
    return out.getvalue()


def _count(output: str, row: str) -> int:
    """The parameters column of a row of the parts table."""
    line = next(x for x in output.splitlines() if x.startswith(row))
    return int(line[len(row):].split()[0].replace(",", ""))


def test_paper_7b_lora_and_llm_total(paper_output):
    lora, base = _count(paper_output, "LoRA (rank 2)"), _count(paper_output, "LLM base")
    assert lora == LORA_7B == 2_097_152
    assert abs(base + lora - LLAMA_7B_PARAMS) / LLAMA_7B_PARAMS < 0.01
    assert "configs/llama-7b (llama: 32 layers, hidden 4096, vocab 32,000" in paper_output
    assert "fits on 8 x 24 GiB with fsdp" in paper_output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, plan) of a small stage-2 model: tiny.yaml's compressor and encoder, a 3-layer
    LLaMA of width 128, 8 rows of 4 s, no CTC compression (so S = T' in a real step too)."""
    llm = tiny_llm_folder(tmp_path_factory.mktemp("plan") / "llm", hidden=128, layers=3, heads=4,
                          kv_heads=2)
    cfg = load_config(TINY, [f"llm.path={llm}", "speech_llm.compression=none",
                             "data.max_frames=3200", "data.max_seconds=4"])
    return cfg, make_plan(cfg, "tiny")


def test_ddp_and_fsdp_sharding(tiny):
    _, plan = tiny

    def per_gpu(parallel, gpus):
        return replace(plan, parallel=parallel, gpus=gpus).per_gpu(False)

    weights = sum(p.bytes for p in plan.parts)
    ddp1, ddp8, fsdp8, fsdp16 = (per_gpu("ddp", 1), per_gpu("ddp", 8), per_gpu("fsdp", 8),
                                 per_gpu("fsdp", 16))
    assert ddp1["weights"] == ddp8["weights"] == weights  # DDP replicates everything
    assert ddp8["adamw"] == ddp1["adamw"] == 2 * plan.trainable_bytes == 2 * ddp1["grads"]
    assert ddp8["grads"] == 2 * ddp1["grads"]  # + gradient buckets
    # FSDP: 1/N of everything, plus the units all-gathered at once
    assert 0 < plan.fsdp_unsharded < weights
    assert fsdp8["weights"] - plan.fsdp_unsharded == pytest.approx(weights / 8, abs=1)
    assert fsdp16["weights"] - plan.fsdp_unsharded == pytest.approx(weights / 16, abs=1)
    assert fsdp8["grads"] == pytest.approx(ddp1["grads"] / 8, abs=1)
    assert fsdp8["adamw"] == pytest.approx(ddp1["adamw"] / 8, abs=1)
    assert fsdp8["activations"] == ddp8["activations"] > 0  # each rank runs its own micro-batch
    assert per_gpu("fsdp", 1)["weights"] == weights  # one rank: nothing to shard or gather
    accumulating = replace(plan, parallel="fsdp", gpus=8, grad_accum=4).per_gpu(False)
    assert accumulating["grads"] == fsdp8["grads"] + ddp1["grads"]  # whole until reduce-scattered


def test_cli_says_whether_it_fits(tiny, capsys):
    cfg, plan = tiny
    llm = f"llm.path={cfg.llm.path}"  # overrides before or after the options
    assert main(["plan", str(TINY), llm, "--gpus", "2", "--parallel", "fsdp",
                 "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("fits on 2 x 80 GiB with fsdp as configured "
                                 "(* = train.activation_checkpointing=false)")
    assert main(["plan", str(TINY), "--gpus", "2", "--parallel", "fsdp", "--gpu-memory", "0.001",
                 llm]) == 0
    assert "does not fit on 2 x 0.001 GiB with fsdp" in capsys.readouterr().out
    # between the two totals, activation checkpointing is what makes it fit, and the plan says so
    with_ac, without = plan.per_gpu(True)["total"], plan.per_gpu(False)["total"]
    assert with_ac < without
    between = replace(plan, gpu_memory=(with_ac + without) / 2 / 2**30 / FIT_FRACTION)
    assert "fits with train.activation_checkpointing=true" in format_plan(between)


def test_unknown_config_key_is_a_one_line_error(capsys):
    assert main(["plan", str(TINY), "train.no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key 'train.no_such_key'" in err


def test_shape_only_llm_is_planned_not_trained():
    from speechllama.models.llm import load_llm, weights_hash

    folder = ROOT / "configs" / "llama-7b"
    for fn in (load_llm, weights_hash):  # training reaches both
        with pytest.raises(FileNotFoundError, match="no weights .config.json only"):
            fn(folder)


def readme_tolerance() -> float:
    """How close README.md says the plan's estimate comes to the measured peak ("within N% of the
    peak measured on a small model on the CPU"): the tolerance the test below holds it to."""
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    claim = re.search(r"within (\d+(?:\.\d+)?)% of the peak measured on a small model on the CPU",
                      text)
    assert claim, ("README.md no longer says 'within N% of the peak measured on a small model on "
                   "the CPU': make this test hold the plan to what it says now")
    return float(claim[1]) / 100


def _measured_peak(model, shape, n_mels: int, bf16: bool) -> int:
    """Peak bytes the CPU allocator holds during a real forward + backward of ``model`` beyond
    what it held before (the profiler's allocation and free events, summed in time order)."""
    from torch.profiler import ProfilerActivity, profile

    b = shape.rows
    model.train()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        feats = torch.randn(b, shape.frames, n_mels)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as train.fit does
            loss = model(feats, torch.full((b,), shape.frames), [[3] * shape.before] * b,
                         [[3] * shape.after] * b, [[4] * shape.targets] * b)
        loss.backward()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    return max(accumulate(n for _, n in events))


@pytest.mark.parametrize("bf16,checkpointing", [(False, False), (True, False), (False, True)])
def test_estimate_within_the_readmes_tolerance_of_measured_peak(tiny, bf16, checkpointing):
    """The plan's activations + gradients against the measured peak of a real training step of
    the same model (built as training builds it) on a batch of the plan's shape, within what
    README.md claims (docs/scale.md has the numbers)."""
    from speechllama.models.build import build_compressor, build_speech_llm
    from speechllama.training.step_trace import prepare

    cfg, plan = tiny
    if bf16:
        cfg = load_config(TINY, [f"llm.path={cfg.llm.path}", "speech_llm.compression=none",
                                 "data.max_frames=3200", "data.max_seconds=4", "train.bf16=true"])
        plan = make_plan(cfg, "tiny")
    torch.manual_seed(0)
    model, _ = build_speech_llm(cfg, build_compressor(cfg),
                                frozen_dtype=torch.bfloat16 if bf16 else torch.float32)
    model = prepare(model, cfg, checkpointing, torch.device("cpu"))  # as the training loop does
    measured = _measured_peak(model, plan.shape, cfg.features.n_mels, bf16)
    estimate = plan.traces[checkpointing].activations + plan.trainable_bytes
    print(f"bf16={bf16} checkpointing={checkpointing}: estimate {estimate / 2**20:.2f} MiB, "
          f"measured {measured / 2**20:.2f} MiB")
    error, tolerance = abs(estimate - measured) / measured, readme_tolerance()
    assert error <= tolerance, (f"estimate / measured = {estimate / measured:.3f}: off by "
                                f"{error:.1%}, README.md claims within {tolerance * 100:g}%")


def test_the_pretrained_ear_is_counted_frozen_in_the_compressor(capsys):
    """compressor.backbone=whisper-base: the plan counts Whisper-base's encoder (20,590,592
    parameters) inside the stage-2 compressor (frozen), from its config alone (no wheel read)."""
    os.chdir(ROOT)
    assert main(["plan", "configs/paper-7b.yaml", "--gpus", "1", "--gpu-memory", "80",
                 "compressor.backbone=whisper-base", "compressor.d_model=256",
                 "compressor.n_layers=2"]) == 0
    out = capsys.readouterr().out
    row = next(x for x in out.splitlines() if x.startswith("compressor"))
    total, trainable = (int(v.replace(",", "")) for v in row[len("compressor"):].split()[:2])
    assert 20_590_592 < total < 25_000_000 and trainable == 0  # the encoder + a ~3M head, frozen
    assert "whisper-base-6of6 frames" in out  # rows counted in Whisper's 50 frames a second
