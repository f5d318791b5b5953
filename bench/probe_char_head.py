"""The stage-1 compressor's two CTC heads side by side: the greedy transcript of its label head
(the one that compresses) and of its auxiliary character head (``compressor.char_layer``), CER
per language on one manifest. Tells whether the label set or the acoustics limit the front end.

    .venv/bin/python bench/probe_char_head.py --model runs/demo/ctc --data runs/demo/data/dev.jsonl
"""

import argparse

import torch

from speechllama.data.batching import LengthBucketSampler, pad_feats
from speechllama.evaluation.metrics import error_rates
from speechllama.models.build import load_compressor
from speechllama.text import CTCTokenizer
from speechllama.training.ctc import recordings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    bundle = load_compressor(args.model)
    chars = CTCTokenizer((bundle.path / "char_tokenizer.model").read_bytes())
    recs, store = recordings(args.data, progress=False)
    feats = [store.get(r[0]) for r in recs]
    labels, letters = [""] * len(recs), [""] * len(recs)
    sampler = LengthBucketSampler([f.shape[0] for f in feats], 20000, shuffle=False)
    with torch.no_grad():
        for batch in sampler.batches(0):
            x, lengths = pad_feats([bundle.cmvn(feats[i]) for i in batch])
            _, logits, out_lengths, char_logits = bundle.model(x, lengths, with_chars=True)
            for row, i in enumerate(batch):
                n = int(out_lengths[row])
                labels[i] = bundle.tokenizer.decode_ctc(logits[row, :n].argmax(-1).tolist())
                letters[i] = chars.decode_ctc(char_logits[row, :n].argmax(-1).tolist())
    print("| language | n | label head CER % | character head CER % |\n|---|---:|---:|---:|")
    for lang in sorted({r[2] for r in recs}):
        idx = [i for i, r in enumerate(recs) if r[2] == lang]
        refs = [recs[i][1] for i in idx]
        a, b = error_rates(refs, [labels[i] for i in idx]), error_rates(refs, [letters[i] for i in idx])
        print(f"| {lang} | {len(idx)} | {a['cer']:.1f} | {b['cer']:.1f} |")


if __name__ == "__main__":
    main()
