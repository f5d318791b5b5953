"""GPU smoke test (bench/gpu_smoke.sh): the real CLI on CUDA, a few minutes on any GPU machine.

1. a tiny tone corpus (no synthesiser needed) and stage 1 on the device;
2. one stage-2 run in bf16 under torchrun with DDP (world size 1) and one with FSDP2 (world size 1),
   on the configured LLM (default: a tiny random LLaMA; ``--llm gemma3-270m`` for the shipped one);
3. a decode with ``speechllama transcribe --device``;
4. step time and peak GPU memory from each run's log next to ``speechllama plan``'s estimate.

``--device cpu`` runs the same path here (without GPU memory), to check the script itself.
Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
WORDS = ["eins", "zwei", "drei", "vier", "fuenf", "sechs"]


def tone_corpus(folder: Path, n: int = 24, seed: int = 0) -> None:
    """``n`` recordings of 2-4 "words" (a tone each) with transcripts and translations."""
    rng = np.random.default_rng(seed)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        words = rng.choice(len(WORDS), size=rng.integers(2, 5)).tolist()
        t = np.arange(int(0.25 * 16000)) / 16000
        wave = np.concatenate([np.sin(2 * np.pi * (300 + 150 * w) * t) * 0.3 for w in words])
        path = folder / "audio" / f"u{i}.wav"
        sf.write(path, wave.astype(np.float32), 16000)
        text = " ".join(WORDS[w] for w in words)
        for task, tgt, out in (("asr", "de", text), ("st", "en", text.upper())):
            rows.append({"id": f"u{i}-{task}", "audio": f"audio/u{i}.wav",
                         "duration": len(wave) / 16000, "src_lang": "de", "tgt_lang": tgt,
                         "src_text": text, "tgt_text": out})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def tiny_llm(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = ["<unk>", "<s>", "</s>", *WORDS, *(w.upper() for w in WORDS), "German:", "English:",
             "Speech:", "Transcript:", "transcript:"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=256, intermediate_size=512,
                                 num_hidden_layers=4, num_attention_heads=4, bos_token_id=1,
                                 eos_token_id=2)).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)
    return folder


def run(cmd: list[str], torchrun: bool = False) -> float:
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
               "--master_port", "29571", "-m", "speechllama", *cmd]
    else:
        cmd = [sys.executable, "-m", "speechllama", *cmd]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.time() - start


def log_summary(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    last, first = rows[-1], rows[0]
    steps = last["step"] - first["step"]
    step_s = (last["elapsed_s"] - first["elapsed_s"]) / steps if steps else float("nan")
    return {"step_s": step_s, "loss": last["loss"], "gpu_peak_gb": last.get("gpu_peak_gb")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--llm", help="stage-2 LLM (default: a tiny random LLaMA made here)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--gpu-memory", type=float, default=80, help="for plan's fits/does not fit")
    ap.add_argument("--out", help="work folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="gpu-smoke-"))
    tone_corpus(work / "corpus")
    llm = args.llm or str(tiny_llm(work / "llm"))
    dev = f"train.device={args.device}"
    run(["train", "ctc", "--config", str(TINY), "--data", str(work / "corpus"), "--out",
         str(work / "ctc"), dev, "train.max_steps=100", "data.max_frames=2000"])
    common = ["--config", str(TINY), "--data", str(work / "corpus"), "--compressor",
              str(work / "ctc"), "--llm", llm]
    stage2 = [dev, "train.bf16=true", f"train.max_steps={args.steps}", "train.log_every=5",
              "data.max_frames=2000"]
    results = {}
    for parallel in ("ddp", "fsdp"):
        out = work / f"s2-{parallel}"
        seconds = run(["train", "speech-llm", *common, "--out", str(out), *stage2,
                       f"train.parallel={parallel}"], torchrun=True)
        results[parallel] = {**log_summary(out), "wall_s": seconds}
    wav = str(work / "corpus" / "audio" / "u0.wav")
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "speechllama", "transcribe", wav, "--model",
                          str(work / "s2-fsdp"), "--src-lang", "de", "--device", args.device],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"decode failed:\n{out.stderr[-2000:]}")
    decode_s = time.time() - start
    print(f"\ndevice {args.device}: {gpu_name(args.device)}")
    for parallel, r in results.items():
        print(f"stage 2 {parallel} x1, bf16: {r['step_s']:.3f} s/step, loss {r['loss']}, "
              f"peak GPU memory {r['gpu_peak_gb']} GiB (run {r['wall_s']:.0f} s)")
        plan = subprocess.run([sys.executable, "-m", "speechllama", "plan", str(TINY), "--gpus",
                               "1", "--gpu-memory", str(args.gpu_memory), "--parallel", parallel,
                               "--seconds", "1",  # the tone corpus's longest rows
                               f"llm.path={llm}", "train.bf16=true", "data.max_frames=2000"],
                              capture_output=True, text=True)
        print(f"  plan's estimate ({parallel}):\n    "
              + "\n    ".join((plan.stdout or plan.stderr).strip().splitlines()[-5:]))
    print(f"decode (CLI, incl. load): {decode_s:.1f} s -> {out.stdout.strip()!r}")


def gpu_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "no GPU (script check only)"


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
