#!/usr/bin/env python
"""Does stage 2 use the audio yet? A short stage-2 training that prints, every 50 steps, the loss on
16 fixed dev rows with the real audio and with the audio vectors replaced by zeros (same weights).

The gap (zero - real) is what the LLM gets from the audio; a model that ignores its audio has gap 0.
Ends with greedy outputs for 6 dev rows. Uses a finished demo run (its corpus and compressor):

    .venv/bin/python bench/probe_audio_use.py --run runs/demo --steps 100 --lr 1.5e-3 \
        data.max_frames=3200 [speech_llm.piece_prior=true ...]

Not a training recipe (no checkpoints, constant LR after a 20-step warmup): a probe for comparing
stage-2 settings side by side at a fixed number of steps. docs/design.md records its results.
"""

import argparse
import random
import time

import torch

from speechllama.audio import fbank, load_audio
from speechllama.config import load_config
from speechllama.data import read_manifest
from speechllama.data.batching import pad_feats
from speechllama.models.decode import DecodingOptions
from speechllama.training.speech_llm import SpeechLLMTask, target_ids


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="demo run folder (data/, ctc/)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = f"{args.run}/data"
    cfg = load_config(None, [f"speech_llm.compressor={args.run}/ctc", f"data.train={data}/train.jsonl",
                             f"data.dev={data}/dev.jsonl", "features.spec_augment=false",
                             *args.overrides])
    task = SpeechLLMTask(cfg, progress=False)
    model, tok = task.model, task.tokenizer
    dev = read_manifest(f"{data}/dev.jsonl")
    random.Random(0).shuffle(dev)
    dev = dev[:16]
    feats, lengths = pad_feats([task.cmvn(fbank(load_audio(u.audio))) for u in dev])
    prompts = [task.prompter(u.task, u.src_lang, u.tgt_lang) for u in dev]
    before, after = [q[0] for q in prompts], [q[1] for q in prompts]
    targets = [target_ids(tok, u.tgt_text) for u in dev]

    @torch.no_grad()
    def dev_loss() -> str:
        model.eval()
        out = []
        for zero in (False, True):
            model.zero_audio = zero
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out.append(model(feats, lengths, before, after, targets).item())
        model.zero_audio = False
        model.train()
        return f"dev loss real {out[0]:.3f}  zero-audio {out[1]:.3f}  gap {out[1] - out[0]:+.3f}"

    print("step 0:", dev_loss(), flush=True)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    batches, start = iter(task.sampler), time.time()
    model.train()
    for step in range(1, args.steps + 1):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = task.loss(model, task.collate(next(batches), torch.Generator().manual_seed(step)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step} ({time.time() - start:.0f} s):", dev_loss(), flush=True)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hyps = model.generate(feats[:6], lengths[:6], before[:6], after[:6], tok.eos_token_id,
                              DecodingOptions(max_new_tokens=40))
    for u, h in zip(dev, hyps):
        print(f"[{u.task} {u.src_lang}] ref {u.tgt_text!r}\n{'':9}hyp {tok.decode(h)!r}")


if __name__ == "__main__":
    main()
