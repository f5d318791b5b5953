#!/usr/bin/env python
"""What the output head costs: both shipped LLMs, full head vs the restricted output vocabulary
(speech_llm.output_vocab=targets), stage-2 training steps and greedy decoding, side by side in ONE
run (interleaved repetitions, medians). Only ratios within one run mean anything (docs/bench.md).

Training: LoRA r=2 on a frozen LLM in bf16 with bf16 autocast (the demo's stage 2), a batch of
--batch rows x --positions positions of random input embeddings, the loss on the last --targets
positions. Decoding: greedy from a random --prefix-long prefix, --new tokens per row (no EOS), at
batch 1 and 16, with the frozen weights in bf16 (the inference default) and float32.

    .venv/bin/python bench/bench_llm_head.py --data runs/demo/data/train.jsonl --threads 2
"""

import argparse
import statistics
import sys
import time

import torch

from speechllama.config import ExperimentConfig
from speechllama.data import read_manifest
from speechllama.models.build import output_vocab_ids
from speechllama.models.decode import DecodingOptions, generate
from speechllama.models.llm import audio_text_mask, load_llm
from speechllama.models.speech_llm import IGNORE, OutputVocab, next_token_loss
from speechllama.training.speech_llm import target_ids, target_text

LLMS = ("gemma3-270m", "smollm2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="runs/demo/data/train.jsonl", help="manifest whose targets make the vocabulary")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--positions", type=int, default=80)
    p.add_argument("--targets", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed repetitions of each variant")
    p.add_argument("--prefix", type=int, default=60)
    p.add_argument("--new", type=int, default=24)
    return p.parse_args(argv)


def vocabulary(tokenizer, rows) -> torch.Tensor:
    asr_target = ExperimentConfig().speech_llm.asr_target
    return output_vocab_ids(tokenizer, [target_ids(tokenizer, target_text(u, asr_target, tokenizer))
                                        for u in rows])


def train_times(llm, vocab: OutputVocab, args) -> dict[str, list[float]]:
    H = llm.config.hidden_size
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(args.batch, args.positions, H, generator=g) * 0.5
    valid = torch.ones(args.batch, args.positions, dtype=torch.bool)
    mask = audio_text_mask(torch.full((args.batch,), 4), torch.full((args.batch,), 40), valid, False)
    ids = vocab.ids[torch.randint(len(vocab.ids), (args.batch, args.targets), generator=g)]
    labels = torch.full((args.batch, args.positions), IGNORE)
    labels[:, -args.targets:] = ids
    targets = [row.tolist() for row in ids]
    trainable = [p for p in llm.parameters() if p.requires_grad]
    times = {"full head": [], "restricted": []}

    def step(v):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = next_token_loss(llm, embeds, mask, valid, labels, targets, v)
        loss.backward()
        for p in trainable:
            p.grad = None
        return time.perf_counter() - start

    step(None), step(vocab)  # warm-up
    for _ in range(args.steps):  # interleaved: both variants see the same machine
        times["full head"].append(step(None))
        times["restricted"].append(step(vocab))
    return times


@torch.inference_mode()
def decode_times(llm, vocab: OutputVocab, args, batch: int) -> dict[str, list[float]]:
    H = llm.config.hidden_size
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(batch, args.prefix, H, generator=g) * 0.5
    valid = torch.ones(batch, args.prefix, dtype=torch.bool)
    mask = audio_text_mask(torch.full((batch,), 4), torch.full((batch,), 40), valid, False)
    dtype = llm.get_input_embeddings().weight.dtype
    embeds, mask = embeds.to(dtype), mask.clamp(min=torch.finfo(dtype).min).to(dtype)
    options = DecodingOptions(max_new_tokens=args.new, max_tokens_per_second=0, no_repeat_ngram_size=0)
    times = {"full head": [], "restricted": []}

    def run(v):
        start = time.perf_counter()
        generate(llm, embeds, mask, valid, -1, options, vocab=v)
        return time.perf_counter() - start

    run(None), run(vocab.ids)
    for _ in range(max(2, args.steps // 2)):
        times["full head"].append(run(None))
        times["restricted"].append(run(vocab.ids))
    return times


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = read_manifest(args.data)
    print(f"# Output head: full vs restricted vocabulary, {args.threads} threads, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    print(f"Vocabulary: the tokens of the {len(rows)} training targets of `{args.data}` + EOS + byte "
          f"tokens. Training: batch {args.batch} x {args.positions} positions, loss on {args.targets}; "
          f"decoding: {args.new} new tokens from a {args.prefix}-position prefix. Medians.\n")
    print("| LLM | vocabulary V' / V | what | full head s | restricted s | speed-up |\n"
          "|---|---:|---|---:|---:|---:|")
    for name in LLMS:
        llm, tok = load_llm(name, lora_rank=2, dtype=torch.bfloat16)
        size = llm.get_output_embeddings().weight.shape[0]
        vocab = OutputVocab(vocabulary(tok, rows), size)
        share = f"{len(vocab.ids):,} / {size:,}"
        results = {"training step (bf16 autocast)": train_times(llm, vocab, args)}
        llm.eval()
        for dtype in (torch.bfloat16, torch.float32):
            llm.to(dtype)  # the frozen weights (LoRA is float32 already)
            for batch in (1, 16):
                label = f"decode batch {batch}, {str(dtype).split('.')[-1]} weights"
                results[label] = decode_times(llm, vocab, args, batch)
        for what, t in results.items():
            full, restricted = statistics.median(t["full head"]), statistics.median(t["restricted"])
            print(f"| {name} | {share} | {what} | {full:.3f} | {restricted:.3f} | {full / restricted:.2f}x |")
        print(f"[bench] {name} done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
