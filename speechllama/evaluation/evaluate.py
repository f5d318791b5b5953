"""Evaluation: WER/CER (jiwer) and BLEU/chrF (sacrebleu) per language, plus reports.

Texts are compared after :func:`speechllama.text.normalize` (lower-case, no punctuation) for
WER/CER; BLEU/chrF use the raw texts with sacrebleu's own tokenisation.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from ..data.batching import LengthBucketSampler, pad_feats
from ..errors import UsageError
from ..models.build import CompressorBundle, load_compressor
from ..models.ctc_compressor import ctc_compress
from ..progress import progress
from .metrics import error_rates, first_per_group, number_kind, score_rows


@torch.inference_mode()
def ctc_outputs(bundle: CompressorBundle, feats: list[torch.Tensor], max_frames: int = 20000):
    """Greedy CTC text and compression statistics for a list of (T, D) feature matrices."""
    sampler = LengthBucketSampler([f.shape[0] for f in feats], max(max_frames, max(f.shape[0] for f in feats)),
                                  shuffle=False)
    texts: list[str] = [""] * len(feats)
    stats = {m: [0.0] * len(feats) for m in ("average", "remove_blank")}
    for batch in sampler.batches(0):
        device = next(bundle.model.parameters()).device
        x, lengths = pad_feats([bundle.cmvn(feats[i]) for i in batch], device)
        hidden, logits, out_lengths = bundle.model(x, lengths)
        labels = logits.argmax(-1)
        for row, i in enumerate(batch):
            texts[i] = bundle.tokenizer.decode_ctc(labels[row, : out_lengths[row]].tolist())
        for mode in stats:
            _, new_lengths = ctc_compress(hidden, logits, out_lengths, mode)
            for row, i in enumerate(batch):
                stats[mode][i] = float(out_lengths[row] / new_lengths[row])
    return texts, stats


def evaluate_ctc(checkpoint: str | Path, manifest: str | Path, progress: bool = True,
                 per_group: int | None = None) -> dict:
    """CER/WER per source language of the greedy CTC output and mean compression ratios.

    The compression ratio of an utterance is its compressor frames (CTC labels) divided by the
    number of vectors ``ctc_compress`` keeps; the report gives the mean over utterances.
    ``per_group``: only the recordings of the first rows of each group (:func:`first_per_group`).
    """
    from ..data import read_manifest
    from ..data.features import BackboneFeatures, manifest_recordings

    bundle = load_compressor(checkpoint)
    keep = {u.audio for u in first_per_group(read_manifest(manifest), per_group)} if per_group else None
    recs, store = manifest_recordings(manifest, BackboneFeatures(bundle.model.backbone), progress,
                                      keep)
    if not recs:
        raise UsageError(f"{manifest}: no rows with a source transcript (src_text) to evaluate")
    texts, ratios = ctc_outputs(bundle, [store.get(r[0]) for r in recs])
    by_lang: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(recs):
        by_lang[r[2]].append(i)
    langs = {}
    for lang, idx in sorted(by_lang.items()):
        langs[lang] = {"n": len(idx), **error_rates([recs[i][1] for i in idx], [texts[i] for i in idx])}
    report = {
        "checkpoint": str(bundle.path), "manifest": str(manifest), "languages": langs,
        "per_group": per_group,
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
    lines += ["", "Mean compression ratio (compressor frames / kept vectors): "
              f"average **{ratios['average']:.2f}x**, remove_blank **{ratios['remove_blank']:.2f}x**."]
    return "\n".join(lines)


def out_file(out: str | Path, ext: str) -> Path:
    """OUT + ext: ``--out runs/qwen2.5-dev`` writes ``qwen2.5-dev.md``, not ``qwen2.md`` (``with_suffix``
    would take ``.5-dev`` for a suffix); an OUT already ending in .md or .json names the same files."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix in (".md", ".json") else out.name
    return out.with_name(stem + ext)


def write_report(report: dict, out: str | Path, markdown: str) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out_file(out, ".json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    out_file(out, ".md").write_text(markdown + "\n")
    print(f"wrote {out_file(out, '.md')} and .json", file=sys.stderr)


def evaluate_model(checkpoint: str | Path, manifest: str | Path, options=None,
                   out: str | Path | None = None, per_group: int | None = None,
                   ceiling: bool = True, llm_alone: bool = True, device: str = "auto") -> dict:
    """Decode the rows of ``manifest`` (all, or the first ``per_group`` of each task, language
    pair and subset) with a Speech-LLaMA model and score them; with ``ceiling``, also the frozen
    LLM's own translation of the same ST rows from their reference transcripts
    (:func:`text_mt_ceiling`); with ``llm_alone``, the model's ASR rows once more without joint
    CTC decoding (when it decodes jointly).

    Writes ``OUT.hyp.jsonl``, ``OUT.json`` and ``OUT.md`` when ``out`` is given.
    """
    from ..data import read_manifest
    from ..data.features import BackboneFeatures, feature_cache_path, load_features
    from ..inference.api import Request, SpeechToText, load

    model: SpeechToText = load(checkpoint, device=device) if options is None \
        else load(checkpoint, options, device=device)
    utts = first_per_group(read_manifest(manifest), per_group)
    extractor = BackboneFeatures(model.backbone)
    store = load_features([u.audio for u in utts], feature_cache_path(manifest, extractor.key),
                          extractor=extractor)
    if store.errors:  # scored without them: say so where a person reads it, not only in the JSON
        print(f"{manifest}: {len(store.errors)} unreadable audio file(s) left out of the scores, "
              f"e.g. {store.errors[0]}", file=sys.stderr)
    utts = [u for u in utts if u.audio in store]
    requests = [Request(store.get(u.audio), u.task, u.src_lang, u.tgt_lang) for u in utts]
    start = time.time()
    hyps = model.decode(requests)
    seconds = time.time() - start
    rows = [{"id": u.id, "task": u.task, "src_lang": u.src_lang, "tgt_lang": u.tgt_lang,
             "ref": u.tgt_text, "hyp": h} for u, h in zip(utts, hyps)]
    audio_s = sum(r.feats.shape[0] for r in requests) / model.feature_rate
    report = {"checkpoint": str(model.bundle.path), "manifest": str(manifest),
              "decoding": dataclasses.asdict(model.options),
              "rtfx": audio_s / max(seconds, 1e-9), "skipped_audio": store.errors,
              "parameters": parameter_counts(model.bundle.model), **score_rows(rows)}
    ctc_rows = compressor_asr_rows(model.bundle, utts, store)
    if ctc_rows:  # the bar stage 2 must clear: its own compressor's transcript of the same rows
        report["compressor_asr"] = score_rows(ctc_rows)["macro"]
    asr = [i for i, r in enumerate(requests) if r.task == "asr"]
    if llm_alone and model.options.ctc_weight and asr:  # what the LLM alone makes of the same rows
        alone = model.decode([requests[i] for i in asr], dataclasses.replace(model.options, ctc_weight=0.0))
        report["llm_alone_asr"] = score_rows([{**rows[i], "hyp": h} for i, h in zip(asr, alone)])["macro"]
    if ceiling:
        found = model_ceiling(model.bundle, utts)
        if found is not None:
            report["text_mt_ceiling"] = found
        found = model_cascade(model.bundle, utts, store)
        if found is not None:
            report["cascade"] = found
    if out is not None:
        write_scored(report, rows, out)
    return report


def write_scored(report: dict, rows: list[dict], out: str | Path) -> None:
    """OUT.hyp.jsonl (one scored row a line), OUT.json and OUT.md."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file(out, ".hyp.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    write_report(report, out, model_report_markdown(report))


def evaluate_whisper(manifest: str | Path, out: str | Path | None = None, per_group: int | None = None,
                     beam: int = 5, threads: int = 2) -> dict:
    """Whisper-base (faster-whisper, int8; ``whisper_peer.py``) on the same rows
    :func:`evaluate_model` scores (the first ``per_group`` of each group): it translates the ST rows
    and transcribes the ASR rows. Its digits are spelled out on the number rows, as the references
    are. Same report format (``table``, ``macro``, ``rtfx``, ``parameters``; OUT.hyp.jsonl)."""
    from ..audio import load_audio
    from ..data import read_manifest
    from .whisper_peer import WHISPER_BASE_PARAMS, WhisperPeer, spell_numbers

    utts = first_per_group(read_manifest(manifest), per_group)
    peer, waves = WhisperPeer(threads), [load_audio(u.audio) for u in utts]
    start = time.time()
    hyps = [peer.run(w, u.src_lang, "translate" if u.task == "st" else "transcribe", beam=beam)
            for u, w in zip(utts, progress(waves, desc=f"Whisper-base on {Path(manifest).name}"))]
    seconds = time.time() - start
    hyps = [spell_numbers(h, u.tgt_lang, kind) if (kind := number_kind(u.id)) else h
            for u, h in zip(utts, hyps)]
    rows = [{"id": u.id, "task": u.task, "src_lang": u.src_lang, "tgt_lang": u.tgt_lang,
             "ref": u.tgt_text, "hyp": h} for u, h in zip(utts, hyps)]
    report = {"system": "whisper-base", "manifest": str(manifest), "decoding": {"beam_size": beam},
              "rtfx": sum(len(w) for w in waves) / 16000 / max(seconds, 1e-9),
              "parameters": {"trainable": 0, "total": WHISPER_BASE_PARAMS}, **score_rows(rows)}
    if out is not None:
        write_scored(report, rows, out)
    return report


def compressor_asr_rows(bundle, utts: list, store) -> list[dict]:
    """Rows like ``evaluate_model``'s with the greedy CTC transcript of the loaded model's own
    compressor as the hypothesis of each ASR row; [] when it has none whose labels can be read
    (the encoder-decoder, or LLM-token labels of another LLM than the model's)."""
    from ..models.speech_llm import SpeechLLM

    if not isinstance(bundle.model, SpeechLLM) or bundle.ctc_tokenizer is None:
        return []
    ctc = CompressorBundle(bundle.model.compressor, bundle.cmvn, bundle.ctc_tokenizer, bundle.config,
                           bundle.path)
    asr = [u for u in utts if u.task == "asr"]
    texts, _ = ctc_outputs(ctc, [store.get(u.audio) for u in asr]) if asr else ([], {})
    return [{"id": u.id, "task": "asr", "src_lang": u.src_lang, "tgt_lang": u.tgt_lang,
             "ref": u.tgt_text, "hyp": t} for u, t in zip(asr, texts)]


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable (audio encoder + LoRA or the whole from-scratch LLM, + the compressor when it is
    fine-tuned) and total parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}


def ceiling_bleu(report: dict, row: dict) -> float | None:
    """The text-MT ceiling's BLEU for a table row of the same task, pair and subset, if any."""
    for t in report.get("text_mt_ceiling", {}).get("table", []):
        if (t["task"], t["pair"], t["subset"]) == (row["task"], row["pair"], row["subset"]):
            return t["bleu"]
    return None


def model_report_markdown(report: dict) -> str:
    lines = ["| task | pair | subset | rows | BLEU | text-MT ceiling BLEU | chrF | WER % | CER % |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for t in report["table"]:
        f = lambda k: f"{t[k]:.1f}" if k in t else ""  # noqa: E731
        c = ceiling_bleu(report, t)
        lines.append(f"| {t['task']} | {t['pair']} | {t['subset']} | {t['n']} | {f('bleu')} | "
                     f"{'' if c is None else f'{c:.1f}'} | {f('chrf')} | {f('wer')} | {f('cer')} |")
    lines += ["", "Macro averages over language pairs:", ""]
    lines += [f"- {k}: **{v:.1f}**" for k, v in report["macro"].items()]
    if "text_mt_ceiling" in report:
        m = report["text_mt_ceiling"]["macro"]
        lines += [f"- text-MT ceiling (the frozen LLM translating the reference transcripts, same "
                  f"prompt and rows): st_bleu_all **{m['st_bleu_all']:.1f}**"
                  + "".join(f", {k} **{m[k]:.1f}**" for k in ("st_bleu_numbers", "st_bleu_sentences")
                            if k in m)]
    sig = next((t["bleu_signature"] for t in report["table"] if "bleu_signature" in t), None)
    if sig:
        lines += ["", f"sacrebleu signature: `{sig}`"]
    w = report["decoding"].get("ctc_weight")
    if w:
        lines += ["", f"Transcripts are decoded jointly with the CTC compressor (ctc_weight {w}, "
                      "docs/design.md \"Joint CTC/LLM decoding\")."]
    if "llm_alone_asr" in report:
        c = report["llm_alone_asr"]
        lines += ["", f"The LLM alone (ctc_weight 0) on the same ASR rows: WER **{c['asr_wer_all']:.1f}** "
                      f"%, CER **{c['asr_cer_all']:.1f}** % (macro)."]
    if "compressor_asr" in report:
        c = report["compressor_asr"]
        lines += ["", f"Its CTC compressor's greedy transcript of the same ASR rows: WER "
                      f"**{c['asr_wer_all']:.1f}** %, CER **{c['asr_cer_all']:.1f}** % (macro)."]
    p = report["parameters"]
    lines += ["", f"Decoding speed: RTFx {report['rtfx']:.1f} (seconds of audio per second of wall time).",
              f"Parameters: {p['trainable'] / 1e6:.2f}M trainable of {p['total'] / 1e6:.1f}M."]
    return "\n".join(lines)


def model_ceiling(bundle, utts: list) -> dict | None:
    """:func:`text_mt_ceiling` of a loaded model's LLM; None for systems without a pretrained
    LLM (trained from scratch, the encoder-decoder)."""
    from ..models.speech_llm import SpeechLLM

    if not isinstance(bundle.model, SpeechLLM) or bundle.config.llm.init != "pretrained":
        return None
    return text_mt_ceiling(bundle.model.llm, bundle.tokenizer, bundle.config.llm.system_prompt, utts)


def model_cascade(bundle, utts: list, store) -> dict | None:
    """The cascade on the same ST rows: the model's CTC compressor's greedy transcript, translated
    by its frozen LLM (:func:`text_mt_ceiling` with those transcripts); None where the model has
    no pretrained LLM or no compressor labels that spell text."""
    from ..models.speech_llm import SpeechLLM

    if not isinstance(bundle.model, SpeechLLM) or bundle.config.llm.init != "pretrained" \
            or bundle.ctc_tokenizer is None:
        return None
    st = [u for u in utts if u.task == "st" and u.src_text]
    if not st:
        return None
    ctc = CompressorBundle(bundle.model.compressor, bundle.cmvn, bundle.ctc_tokenizer, bundle.config,
                           bundle.path)
    texts, _ = ctc_outputs(ctc, [store.get(u.audio) for u in st])
    return text_mt_ceiling(bundle.model.llm, bundle.tokenizer, bundle.config.llm.system_prompt, st,
                           sources={u.id: t for u, t in zip(st, texts)})


@torch.inference_mode()
def text_mt_ceiling(llm, tok, system_prompt: str, utts: list, batch_size: int = 16,
                    sources: dict[str, str] | None = None) -> dict | None:
    """What the frozen LLM itself makes of the ST rows from text: the speech model's prompt with
    the reference source transcript's tokens in place of the audio vectors, LoRA off (if any),
    greedy, the whole vocabulary; scored like the model (:func:`score_rows`). None without ST
    rows. ``sources`` (row id -> text): other source texts instead of the references (a cascade:
    the compressor's greedy transcripts)."""
    import contextlib

    from torch.nn.utils.rnn import pad_sequence

    from ..models.decode import DecodingOptions, generate
    from ..models.llm_family import llm_inputs
    from ..models.prompt import Prompter, stop_ids
    from ..models.speech_llm import assemble
    from ..text import word_start_prefix

    st = [u for u in utts if u.task == "st" and u.src_text]
    if not st:
        return None
    embed = llm.get_input_embeddings()
    prompter, prefix = Prompter(tok, system_prompt), word_start_prefix(tok)
    texts = [sources[u.id] if sources is not None else u.src_text for u in st]
    sources = [tok(prefix + t, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
               for t in texts]
    order = sorted(range(len(st)), key=lambda i: len(sources[i]))
    hyps = [""] * len(st)
    off = llm.disable_adapter() if hasattr(llm, "disable_adapter") else contextlib.nullcontext()
    options = DecodingOptions(max_tokens_per_second=0, ctc_weight=0.0, full_vocab=True)
    with off:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            prompts = [prompter("st", st[i].src_lang, st[i].tgt_lang) for i in batch]
            device = embed.weight.device
            src = pad_sequence([embed(torch.tensor(sources[i], device=device)) for i in batch],
                               batch_first=True)
            lengths = torch.tensor([len(sources[i]) for i in batch], device=device)
            embeds, mask, valid, _ = assemble(embed, src, lengths, [p[0] for p in prompts],
                                              [p[1] for p in prompts], None, causal_audio=True)
            embeds, mask = llm_inputs(llm, embeds, mask)
            budget = torch.clamp(2 * lengths + 8, max=options.max_new_tokens)
            out = generate(llm, embeds, mask, valid, stop_ids(tok), options, budget)
            for i, ids in zip(batch, out):
                hyps[i] = tok.decode(ids, skip_special_tokens=True).strip()
    rows = [{"id": u.id, "task": "st", "src_lang": u.src_lang, "tgt_lang": u.tgt_lang,
             "ref": u.tgt_text, "hyp": h} for u, h in zip(st, hyps)]
    return score_rows(rows)
