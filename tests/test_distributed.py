"""Device placement, FSDP2, gradient accumulation and activation checkpointing, on CPU (gloo)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CORPUS_WORDS, TINY, TWO_UTTERANCES, tiny_llm_folder, write_corpus
from safetensors.torch import load_file
from torch import nn

from speechllama.cli import main
from speechllama.config import load_config
from speechllama.device import resolve_device

# 4 training rows (2 recordings x ASR/ST) of 98 and 123 frames: one row per batch, so every epoch
# has 4 batches, which 1 process and 2 ranks both use whole
S2 = ["data.max_frames=130", "train.log_every=1", "train.max_steps=6",
      "train.checkpoint_every=3", "train.keep_checkpoints=3"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write_corpus(root / "corpus", TWO_UTTERANCES, "train")
    tiny_llm_folder(root / "llm", CORPUS_WORDS)
    assert main(["train", "ctc", "--config", str(TINY), "--data", str(root / "corpus"), "--out",
                 str(root / "ctc"), "train.max_steps=20"]) == 0
    return root


def _stage2(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "speech-llm", "--config", str(TINY), "--data", str(root / "corpus"),
            "--out", str(out), "--compressor", str(root / "ctc"), "--llm", str(root / "llm"), *S2,
            *extra]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(port), "-m", "speechllama", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def _resumable_copy(checkpoint: Path, run: Path) -> Path:
    """A run folder whose latest checkpoint is a copy of ``checkpoint``."""
    run.mkdir(parents=True)
    shutil.copytree(checkpoint, run / checkpoint.name)
    (run / "latest").write_text(checkpoint.name + "\n")
    return run


def test_device_auto_is_cpu_without_cuda_and_a_missing_gpu_is_a_one_line_error(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as here, on any machine
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device(spec)
    with pytest.raises(ValueError, match="expected one of"):
        resolve_device("tpu")
    write_corpus(tmp_path / "corpus", TWO_UTTERANCES, "train")
    code = main(["train", "ctc", "--config", str(TINY), "--data", str(tmp_path / "corpus"),
                 "--out", str(tmp_path / "run"), "train.device=cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no CUDA device" in err[0], err
    assert not (tmp_path / "run").exists()  # it failed before any work
    with pytest.raises(Exception, match="train.device"):
        load_config(TINY, ["train.device=gpu"])


def test_fsdp_two_ranks_equal_one_process_resume_exactly_and_load_in_one_process(stage1, tmp_path):
    """2 FSDP2 ranks == 1 process accumulating 2 micro-batches (the same global batch): the same
    loss curve and weights; an FSDP checkpoint resumes under FSDP bit-exactly and in one process
    (another world size) to the same weights; it loads for inference in one process."""
    fsdp, single = tmp_path / "fsdp", tmp_path / "single"
    _torchrun(_stage2(stage1, fsdp, "train.parallel=fsdp"))
    assert main(_stage2(stage1, single, "train.grad_accum=2")) == 0
    assert _losses(fsdp) == _losses(single) and len(_losses(fsdp)) == 6
    a, b = _weights(fsdp / "step-000006"), _weights(single / "step-000006")
    assert a.keys() == b.keys()
    lora = [k for k in a if "lora_B" in k]
    assert lora and all(a[k].abs().sum() > 0 for k in lora)  # trained, not the zero init
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)

    again = _resumable_copy(fsdp / "step-000003", tmp_path / "again")
    _torchrun(["train", "speech-llm", "--out", str(again), "--resume"])
    c = _weights(again / "step-000006")
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert _losses(again) == _losses(fsdp)[3:]

    one = _resumable_copy(fsdp / "step-000003", tmp_path / "one")
    assert main(["train", "speech-llm", "--out", str(one), "--resume", "train.parallel=ddp",
                 "train.grad_accum=2"]) == 0
    d = _weights(one / "step-000006")
    for k in a:
        torch.testing.assert_close(a[k], d[k], rtol=1e-5, atol=1e-6, msg=k)

    import speechllama

    model = speechllama.load(fsdp, dtype=torch.float32)
    wav = str(stage1 / "corpus" / "audio" / f"{TWO_UTTERANCES[0][0]}.wav")
    assert isinstance(model.transcribe(wav, src_lang="de"), str)
    assert model.device == torch.device("cpu")


def test_fsdp_bf16_with_checkpointing_and_accumulation_trains_fp32_weights(stage1, tmp_path):
    """FSDP2's bf16 policy with activation checkpointing and 2 micro-batches (no sync on the
    first) on 2 ranks: it runs, and the saved trainable weights are fp32."""
    run = tmp_path / "bf16"
    _torchrun(_stage2(stage1, run, "train.parallel=fsdp", "train.bf16=true", "train.max_steps=2",
                      "train.activation_checkpointing=true", "train.grad_accum=2"))
    w = _weights(run / "step-000002")
    assert all(v.dtype == torch.float32 for k, v in w.items() if k.startswith(("llm.", "encoder.")))
    assert all(torch.isfinite(torch.tensor(_losses(run))))


class _ToySampler:
    """Fixed batches: the same items in 4 batches of 2 or 2 batches of 4."""

    def __init__(self, size: int):
        self.size, self.epoch, self.index = size, 0, 0

    def batches(self, epoch):
        return [list(range(i, i + self.size)) for i in range(0, 8, self.size)]

    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state):
        self.epoch, self.index = state["epoch"], state["index"]


class _ToyTask:
    def __init__(self, batch_size: int):
        torch.manual_seed(0)
        self.model, self.sampler = nn.Linear(4, 1), _ToySampler(batch_size)
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)

    def collate(self, indices, generator):
        return {"x": self.x[indices], "y": self.y[indices]}

    def loss(self, model, batch):
        return nn.functional.mse_loss(model(batch["x"]), batch["y"]), {"items": len(batch["x"])}

    def state_dict(self, model):
        return {k: v for k, v in model.state_dict().items()}

    def save(self, folder, tensors):
        from speechllama.checkpoint import save_tensors

        save_tensors(tensors, folder / "model.safetensors")

    def load(self, folder, model):
        model.load_state_dict(load_file(str(folder / "model.safetensors")))


def test_grad_accum_equals_one_large_batch(tmp_path):
    from speechllama.training.loop import fit

    results = {}
    for size, accum in ((4, 1), (2, 2)):
        cfg = load_config(None, ["train.max_steps=3", "train.warmup_steps=1", "train.lr=0.1",
                                 f"train.grad_accum={accum}", "train.log_every=1"])
        task = _ToyTask(size)
        fit(task, cfg, tmp_path / f"accum{accum}")
        results[accum] = (task.model.weight.detach().clone(), _losses(tmp_path / f"accum{accum}"))
    torch.testing.assert_close(results[1][0], results[2][0])
    assert results[1][1] == pytest.approx(results[2][1], rel=1e-5)
    assert not torch.equal(results[1][0], _ToyTask(4).model.weight)  # it trained


def test_activation_checkpointing_gives_identical_gradients(tmp_path):
    from speechllama.config import load_config as load
    from speechllama.models.build import build_compressor, build_speech_llm
    from speechllama.training.parallel import llm_layers, parallelize

    cfg = load(TINY, [f"llm.path={tiny_llm_folder(tmp_path / 'llm', CORPUS_WORDS)}",
                      "llm.lora_rank=2"])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, _ = build_speech_llm(cfg, build_compressor(cfg))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(p)  # LoRA B starts at zero: make its path carry gradient
        cfg.train.activation_checkpointing = checkpointing
        model = parallelize(model, cfg.train, torch.device("cpu"), 1)
        model.train()
        calls = []  # forward calls inside the first LLM layer: again in backward when checkpointed
        llm_layers(model)[0].input_layernorm.register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        feats, lengths = torch.randn(2, 120, 80), torch.tensor([120, 90])
        loss = model(feats, lengths, [[13], [13, 14]], [[15], [16]], [[3, 4, 2], [8, 2]])
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any("lora" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)
    model.llm.activation_checkpointing_disable()


def test_dataloader_workers_give_the_same_run(stage1, tmp_path):
    """Batches built in 2 worker processes (augmentation and SpecAugment drawn there) == built in
    the training process: each batch's randomness is seeded by its position, not by who builds it."""
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        assert main(["train", "ctc", "--config", str(TINY), "--data", str(stage1 / "corpus"),
                     "--out", str(out), "train.max_steps=8", "augment.prob=0.7",
                     "features.spec_augment=true", f"data.num_workers={workers}"]) == 0
        runs[workers] = _weights(out / "step-000008")
    assert all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_eager_and_sdpa_attention_read_the_audio_mask_alike(tmp_path):
    """llm.attn_implementation: eager and sdpa give the same loss with the custom 4-D audio mask,
    for both masks, and the mask matters (a bidirectional audio block changes the loss)."""
    from speechllama.models.build import build_compressor, build_speech_llm

    llm = tiny_llm_folder(tmp_path / "llm", CORPUS_WORDS)
    feats, lengths = torch.randn(2, 120, 80, generator=torch.Generator().manual_seed(1)), \
        torch.tensor([120, 90])
    losses = {}
    for mask in ("non_causal", "causal"):
        for attn in ("sdpa", "eager"):
            cfg = load_config(TINY, [f"llm.path={llm}", f"llm.attn_implementation={attn}",
                                     f"speech_llm.audio_mask={mask}"])
            torch.manual_seed(0)
            model, _ = build_speech_llm(cfg, build_compressor(cfg))
            assert model.llm.config._attn_implementation == attn
            with torch.no_grad():
                losses[mask, attn] = model.eval()(feats, lengths, [[13], [13, 14]], [[15], [16]],
                                                  [[3, 4, 2], [8, 2]])
        torch.testing.assert_close(losses[mask, "sdpa"], losses[mask, "eager"])
    assert not torch.allclose(losses["causal", "eager"], losses["non_causal", "eager"])


def _replica_check(rank: int, store_file: str, results) -> None:
    import torch.distributed as dist

    from speechllama.training.loop import _params_identical_across_ranks

    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)  # "frozen base": differs by rank, is never compared
    with torch.no_grad():
        model[0].weight.add_(rank)
    same_trainable = _params_identical_across_ranks(model)
    with torch.no_grad():
        model[1].weight[0, 0].add_(1e-3 * rank)  # one trainable value differs on rank 1
    results[rank] = (same_trainable, _params_identical_across_ranks(model))
    dist.destroy_process_group()


def test_end_of_run_replica_check_compares_trainable_parameters_only(tmp_path):
    """The DDP end-of-run check gathers a checksum of the trainable parameters (nothing that
    scales with a frozen LLM) and still catches one differing trainable value (gloo, 2 ranks)."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_replica_check, args=(str(tmp_path / "store"), results), nprocs=2)
    assert results[0] == results[1] == (True, False)
