"""Evaluation: WER/CER (jiwer) and BLEU/chrF (sacrebleu) per language, plus reports.

Texts are compared after :func:`speechllama.text.normalize` (lower-case, no punctuation) for
WER/CER; BLEU/chrF use the raw texts with sacrebleu's own tokenisation.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import jiwer
import torch

from .data.batching import LengthBucketSampler, pad_feats
from .models.build import CompressorBundle, load_compressor
from .models.ctc_compressor import ctc_compress
from .text import normalize


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus WER and CER in percent after normalisation; an empty hypothesis counts as deletions."""
    refs_n = [normalize(r) for r in refs]
    hyps_n = [normalize(h) for h in hyps]
    keep = [i for i, r in enumerate(refs_n) if r]
    refs_n, hyps_n = [refs_n[i] for i in keep], [hyps_n[i] for i in keep]
    if not refs_n:
        return {"wer": float("nan"), "cer": float("nan")}
    return {"wer": 100 * jiwer.wer(refs_n, hyps_n), "cer": 100 * jiwer.cer(refs_n, hyps_n)}


@torch.inference_mode()
def ctc_outputs(bundle: CompressorBundle, feats: list[torch.Tensor], max_frames: int = 20000):
    """Greedy CTC text and compression statistics for a list of (T, 80) fbank matrices."""
    sampler = LengthBucketSampler([f.shape[0] for f in feats], max(max_frames, max(f.shape[0] for f in feats)),
                                  shuffle=False)
    texts: list[str] = [""] * len(feats)
    stats = {m: [0.0] * len(feats) for m in ("average", "remove_blank")}
    for batch in sampler.batches(0):
        x, lengths = pad_feats([bundle.cmvn(feats[i]) for i in batch])
        hidden, logits, out_lengths = bundle.model(x, lengths)
        labels = logits.argmax(-1)
        for row, i in enumerate(batch):
            texts[i] = bundle.tokenizer.decode_ctc(labels[row, : out_lengths[row]].tolist())
        for mode in stats:
            _, new_lengths = ctc_compress(hidden, logits, out_lengths, mode)
            for row, i in enumerate(batch):
                stats[mode][i] = float(out_lengths[row] / new_lengths[row])
    return texts, stats


def evaluate_ctc(checkpoint: str | Path, manifest: str | Path, progress: bool = True) -> dict:
    """CER/WER per source language of the greedy CTC output and mean compression ratios.

    The compression ratio of an utterance is its 4x-subsampled length divided by the number of
    vectors ``ctc_compress`` keeps; the report gives the mean over utterances.
    """
    from .tasks.ctc import recordings

    bundle = load_compressor(checkpoint)
    recs, store = recordings(manifest, progress=progress)
    if not recs:
        raise ValueError(f"{manifest}: no rows with a source transcript (src_text) to evaluate")
    texts, ratios = ctc_outputs(bundle, [store.get(r[0]) for r in recs])
    by_lang: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(recs):
        by_lang[r[2]].append(i)
    langs = {}
    for lang, idx in sorted(by_lang.items()):
        langs[lang] = {"n": len(idx), **error_rates([recs[i][1] for i in idx], [texts[i] for i in idx])}
    report = {
        "checkpoint": str(bundle.path), "manifest": str(manifest), "languages": langs,
        "macro_cer": sum(v["cer"] for v in langs.values()) / len(langs),
        "macro_wer": sum(v["wer"] for v in langs.values()) / len(langs),
        "compression_ratio": {m: sum(v) / len(v) for m, v in ratios.items()},
        "skipped_audio": store.errors,
        "examples": [{"ref": recs[i][1], "hyp": texts[i]} for i in range(min(5, len(recs)))],
    }
    return report


def ctc_report_markdown(report: dict) -> str:
    lines = ["| language | utterances | CER % | WER % |", "|---|---:|---:|---:|"]
    for lang, v in report["languages"].items():
        lines.append(f"| {lang} | {v['n']} | {v['cer']:.1f} | {v['wer']:.1f} |")
    lines.append(f"| **macro average** | | **{report['macro_cer']:.1f}** | **{report['macro_wer']:.1f}** |")
    ratios = report["compression_ratio"]
    lines += ["", "Mean compression ratio (4x-subsampled frames / kept vectors): "
              f"average **{ratios['average']:.2f}x**, remove_blank **{ratios['remove_blank']:.2f}x**."]
    return "\n".join(lines)


def write_report(report: dict, out: str | Path, markdown: str) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    out.with_suffix(".md").write_text(markdown + "\n")
    print(f"wrote {out.with_suffix('.md')} and .json", file=sys.stderr)
