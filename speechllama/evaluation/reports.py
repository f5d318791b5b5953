"""The demo's Markdown report (runs/demo/report.md)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config
from ..models.shipped import describe_llm
from .evaluate import ctc_report_markdown


def _pair_table(reports: dict) -> list[str]:
    """Per task, language pair and subset: each model's BLEU (ST) or WER (ASR), and beside the
    first model's BLEU its frozen LLM's text-MT ceiling on the same rows."""
    from .evaluate import ceiling_bleu

    names = list(reports)
    first_report = reports[names[0]]
    has_ceiling = "text_mt_ceiling" in first_report
    columns = names[:1] + ["chrF / CER %"] \
        + (["text-MT ceiling (frozen LLM, reference transcript)"] if has_ceiling else []) + names[1:]
    lines = ["| task | pair | subset | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---:|" * len(columns)]
    first = first_report["table"]
    for row in first:
        metric = "bleu" if row["task"] == "st" else "wer"
        cells = []
        for name in names:
            match = [r for r in reports[name]["table"] if (r["task"], r["pair"], r["subset"]) ==
                     (row["task"], row["pair"], row["subset"])]
            cells.append(f"{match[0][metric]:.1f}" if match else "")
        cells.insert(1, f"{row['chrf' if metric == 'bleu' else 'cer']:.1f}")
        if has_ceiling:
            c = ceiling_bleu(first_report, row)
            cells.insert(2, "" if c is None else f"{c:.1f}")
        label = "BLEU" if metric == "bleu" else "WER %"
        lines.append(f"| {row['task']} ({label}) | {row['pair']} | {row['subset']} | "
                     + " | ".join(cells) + " |")
    return lines


def _source_table(stats: dict) -> list[str]:
    """Hours of audio per split (and held-out set), voice source and language."""
    hours = stats["hours_by_source"]
    langs = sorted({lang for split in hours.values() for src in split.values() for lang in src})
    lines = ["| split | source | " + " | ".join(langs) + " | total |", "|---|---|" + "---:|" * (len(langs) + 1)]
    for split, sources in hours.items():
        for source, by_lang in sources.items():
            lines.append(f"| {split} | {source} | " + " | ".join(f"{by_lang[lang]:.2f}" if lang in by_lang else ""
                                                            for lang in langs) + f" | {sum(by_lang.values()):.2f} |")
    return lines


FEATURES_STAGE = "stage 1: features (frozen Whisper-base encoder)"  # its Timings name (pipeline.py)
HELDOUT_TITLES = {
    "kokoro": "unseen voice source: Kokoro-82M voices training never used",
    "real": "real speech: human Czech and Dutch voice acting, test split",
}


def _heldout_section(ctc: dict, heldout: dict, per_group: int, peer: dict) -> list[str]:
    """Each held-out set: its compressor's CER (the recordings of the first rows of each group), the
    model's scores on the first ``per_group`` rows of each group, next to the same numbers on the
    synthetic test split; Whisper-base's on the same rows where ``peer`` has them."""
    names = [n for n in HELDOUT_TITLES if n in ctc]
    if not names:
        return []
    lines = ["", "## Held-out sets: voices training never heard", "",
             "Compressor: greedy CTC transcript of the recordings of the first "
             f"{ctc['test'].get('per_group') or 'all'} rows of each group. Model: the first "
             f"{per_group} rows of each task, language pair and subset. CER/WER after "
             "`speechllama.text.normalize`.", "",
             "| set | compressor CER % | compressor WER % | ST BLEU | ST chrF | ASR WER % | ASR CER % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    keys = ("st_bleu_all", "st_chrf_all", "asr_wer_all", "asr_cer_all")
    for name in ["test"] + names:
        c, m = ctc[name], heldout.get(name, {}).get("macro", {})
        title = "synthetic test split (espeak-ng, for comparison)" if name == "test" else HELDOUT_TITLES[name]
        lines.append(f"| {title} | {c['macro_cer']:.1f} | {c['macro_wer']:.1f} | "
                     + " | ".join(_num(m.get(k)) for k in keys) + " |")
        if name in peer:
            lines.append("| Whisper-base, same rows | – | – | "
                         + " | ".join(_num(peer[name]["macro"].get(k)) for k in keys) + " |")
    for name in names:
        lines += ["", f"Compressor CER per language, {HELDOUT_TITLES[name]}: "
                  + ", ".join(f"{lang} {v['cer']:.1f}% (n={v['n']})" for lang, v in ctc[name]["languages"].items()) + "."]
    return lines


def _num(v) -> str:
    return "–" if v is None else f"{v:.1f}"


# The goals of the longer recipe (issue "Beat Whisper-base on voices it never heard")
GOAL_BLEU = 15.0  # macro ST BLEU on the test split, sentences and numbers each
GOAL_P = 0.01  # Speech-LLaMA beats its zero-audio control at this significance


def goals(reports: dict, heldout: dict, peer: dict, p: float | None) -> list[str]:
    """Each goal of the longer recipe, met or short by how much (``peer``: Whisper-base's reports
    on the same rows)."""
    def row(goal: str, value, target, higher: bool, unit: str = "") -> str:
        if value is None or target is None:
            return f"| {goal} | – | {_num(target)} | not measured |"
        met = value > target if higher else value < target
        gap = "met" if met else f"short by {abs(value - target):.1f}{unit}"
        return f"| {goal} | {value:.1f} | {target:.1f} | {gap} |"

    main = reports["speech-llm"]["macro"]
    lines = ["", "## Goals of the longer recipe", "", "| goal | Speech-LLaMA | target | |", "|---|---:|---:|---|"]
    for name, title in HELDOUT_TITLES.items():
        if name in peer and name in heldout:
            m, w = heldout[name]["macro"], peer[name]["macro"]
            lines.append(row(f"ST BLEU above Whisper-base's, {title}", m.get("st_bleu_all"),
                             w.get("st_bleu_all"), True, " BLEU"))
            lines.append(row(f"ASR WER below Whisper-base's, {title}", m.get("asr_wer_all"),
                             w.get("asr_wer_all"), False, " points"))
    for subset in ("sentences", "numbers"):
        lines.append(row(f"test split: macro ST BLEU on {subset} >= {GOAL_BLEU:g}",
                         main.get(f"st_bleu_{subset}"), GOAL_BLEU, True, " BLEU"))
    control = reports.get("zero-audio control", {}).get("macro", {}).get("st_bleu_all")
    if p is None or control is None:
        lines.append(f"| beats its zero-audio control at p < {GOAL_P} | – | – | not measured |")
    else:
        better = main.get("st_bleu_all", 0.0) > control
        met = better and p < GOAL_P
        lines.append(f"| beats its zero-audio control at p < {GOAL_P} (BLEU {main.get('st_bleu_all', 0.0):.1f} vs "
                     f"{control:.1f}) | p={p:.3f} | {GOAL_P} | "
                     + ("met" if met else "not met" + ("" if better else ": the control scores as high")) + " |")
    return lines


def shortfall(ctc: dict, reports: dict, heldout: dict, peer: dict) -> list[str]:
    """Why the goals fall short, from this run's own numbers: what the ear's transcripts are worth
    to the frozen LLM (cascade against text-MT ceiling), the ear's errors on each set next to
    Whisper-base's, and how much of the model's gain over its control carries to unseen voices."""
    main = reports["speech-llm"]
    ceiling = main.get("text_mt_ceiling", {}).get("macro", {}).get("st_bleu_all")
    cascade = main.get("cascade", {}).get("macro", {}).get("st_bleu_all")
    control = reports.get("zero-audio control", {}).get("macro", {}).get("st_bleu_all")
    lines = ["", "## Why, measured in this run", ""]
    if ceiling is not None and cascade is not None:
        lines.append(f"- **What the ear's transcripts are worth to the LLM.** The frozen LLM translates the "
                     f"reference transcripts of the test rows at {ceiling:.1f} BLEU (the text-MT ceiling) and "
                     f"the ear's greedy transcripts of the same recordings at {cascade:.1f} (the cascade): "
                     f"the ear, not the LLM, is what caps BLEU.")
    sets = [n for n in ["test", *HELDOUT_TITLES] if n in ctc]
    ear = "; ".join(f"{'test split' if n == 'test' else HELDOUT_TITLES[n].split(':')[0]} "
                    f"CER {ctc[n]['macro_cer']:.1f}% / WER {ctc[n]['macro_wer']:.1f}%"
                    + (f" (Whisper-base transcribing: CER {peer[n]['macro']['asr_cer_all']:.1f}% / "
                       f"WER {peer[n]['macro']['asr_wer_all']:.1f}%)" if n in peer else "") for n in sets)
    worst = min(ctc[n]["macro_wer"] for n in sets)
    lines.append(f"- **The ear's greedy CTC transcripts** (stage 1 alone; Whisper-base on the report's "
                 f"ASR rows of the set): {ear}."
                 + (" With a word error rate of at least 80% on every set, most words carry an error: "
                    "the LLM reads garbled words." if worst >= 80 else ""))
    gains = [f"test split {main['macro'].get('st_bleu_all', 0.0):.1f}"
             + (f" against its control's {control:.1f}" if control is not None else "")]
    gains += [f"{HELDOUT_TITLES[n].split(':')[0]} {heldout[n]['macro'].get('st_bleu_all', 0.0):.1f}"
              for n in HELDOUT_TITLES if n in heldout]
    lines.append(f"- **What stage 2 learned carries little to new voices**: ST BLEU {', '.join(gains)}.")
    lines.append("- What would close it, and what was measured about each option: the README's "
                 "Results and docs/design.md (\"A pretrained ear\", \"The quality preset\").")
    return lines


def demo_report(out: Path, data: Path, ctc: dict, reports: dict, heldout: dict, examples: list[dict],
                timings: dict, per_group: int, heldout_per_group: int,
                reused: list[str] = (), peer: dict | None = None, preset: str = "") -> str:
    peer = peer or {}
    stats = json.loads((data / "stats.json").read_text())
    main = reports["speech-llm"]
    params = main["parameters"]
    llm_path = load_config(out / "model" / "config.yaml").llm.path
    reproduce = (f"`speechllama demo --preset {preset} --out {out}`" if preset else
                 "`bash scripts/demo.sh` (= install, then `speechllama demo --out runs/demo`)")
    lines = [f"# speechllama demo report{f' (preset {preset})' if preset else ''}", "",
             f"Reproduce: {reproduce}.",
             "", "## Corpus", "",
             "The human-translated Fish Fillets lines and num2words number expressions, spoken by "
             "espeak-ng voices (every line), Kokoro-82M (the unseen-voice held-out set) and the "
             "game's human Czech/Dutch voice acting (train/dev splits in training, its test split "
             "held out): "
             + ", ".join(f"{k}: {v['audio_files']} recordings / {v['hours']:.2f} h"
                         for k, v in stats["splits"].items()) + ". Hours per source and language:", ""]
    lines += _source_table(stats)
    model_cfg = load_config(out / "model" / "config.yaml")
    backbone = model_cfg.compressor.backbone
    ear = ("the pretrained Whisper-base encoder (MIT), frozen below its top "
           f"{model_cfg.compressor.backbone_trainable_layers} layer(s), its outputs computed once "
           f"and cached ({timings.get(FEATURES_STAGE, 0):.0f} s), under a CTC head"
           if backbone == "whisper-base" else "the paper's compressor trained from scratch (2 Conv2D on fbank)")
    lines += ["", "## Speech-LLaMA on the test split (unseen sentences, espeak-ng voices)", "",
             f"Ear (`compressor.backbone={backbone}`): {ear}; compressed to "
             f"{'one vector per LLM token of its greedy transcript' if model_cfg.speech_llm.spans == 'llm_tokens' else 'one vector per run of a greedy CTC label'}"
             f" (`speech_llm.spans={model_cfg.speech_llm.spans}`). Training sample: "
             + (f"{model_cfg.data.max_hours:g} h of the training recordings." if model_cfg.data.max_hours else "every training recording.") + "",
             "", f"LLM: {describe_llm(llm_path)}, frozen, with LoRA.", "",
             f"Model: `{out / 'model'}`; trainable {params['trainable'] / 1e6:.2f}M of "
             f"{params['total'] / 1e6:.1f}M parameters (audio encoder + LoRA; the LLM and the "
             f"CTC compressor frozen). Rows scored: the first {per_group} test rows of each task, "
             f"language pair and subset (`speechllama evaluate --per-group {per_group}`). "
             "The text-MT ceiling is the frozen LLM (LoRA off) given the same prompt with the "
             "reference source transcript in place of the audio: what a perfect ear would be "
             "worth without any translation learned. The cascade is the same frozen LLM given its "
             "compressor's greedy transcript instead.", ""]
    shown = reports | ({"Whisper-base (same rows)": peer["test"]} if "test" in peer else {})
    lines += _pair_table(shown)
    lines += ["", "Macro averages over language pairs:", "",
              "| metric | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
    for key in main["macro"]:
        lines.append(f"| {key} | " + " | ".join(_num(r["macro"].get(key)) for r in shown.values()) + " |")
    if "text_mt_ceiling" in main:
        lines.append("| st_bleu_all text-MT ceiling (frozen LLM, reference transcripts) | "
                     f"{main['text_mt_ceiling']['macro']['st_bleu_all']:.1f} |"
                     + " – |" * (len(shown) - 1))
    if "cascade" in main:
        lines.append("| st_bleu_all cascade (frozen LLM, its compressor's greedy transcripts) | "
                     f"{main['cascade']['macro']['st_bleu_all']:.1f} |"
                     + " – |" * (len(shown) - 1))
    for part, label in (("llm_alone_asr", "of the LLM alone (ctc_weight 0, same rows)"),
                        ("compressor_asr", "of its CTC compressor alone (greedy, same rows)")):
        if not any(part in r for r in reports.values()):
            continue
        for key in ("asr_wer_all", "asr_cer_all"):  # the bar for ASR: the compressor alone
            lines.append(f"| {key} {label} | " + " | ".join(
                f"{r[part][key]:.1f}" if part in r else "–" for r in shown.values()) + " |")
    control = [n.replace(" ", "-") for n in reports if n != "speech-llm"]
    p = None
    if control:  # is the difference in BLEU more than chance?
        from .statistics import paired_p

        p = paired_p(out, "speech-llm", control[0])
        if p is not None:
            lines += ["", f"Speech-LLaMA vs the {control[0]}, X->en BLEU: paired bootstrap p={p:.3f} "
                          "(sacrebleu, 1000 resamples, the ST rows pooled over language pairs)."]
    if "test" in peer:
        lines += ["", "Whisper-base (faster-whisper, int8, beam 5; `speechllama.evaluation.evaluate.evaluate_whisper`) "
                      "translates the ST rows and transcribes the ASR rows of the same test rows, its digits "
                      f"spelled out on the number rows as the references are; RTFx {peer['test']['rtfx']:.1f}."]
        lines += goals(reports, heldout, peer, p)
        lines += shortfall(ctc, reports, heldout, peer)
    sig = next((r["bleu_signature"] for r in main["table"] if "bleu_signature" in r), "")
    lines += ["", f"sacrebleu: `{sig}`. WER/CER after `speechllama.text.normalize`.",
              f"Decoding RTFx (greedy, batched): {main['rtfx']:.1f}.",
              (f"Transcripts: joint CTC/LLM decoding, ctc_weight {main['decoding']['ctc_weight']} "
               "(the LLM's hypotheses also scored by the compressor's CTC prefix probability; "
               "docs/design.md); the zero-audio control decodes with its LLM alone."
               if main["decoding"].get("ctc_weight") else "Transcripts: the LLM alone."),
              "", "## Stage 1: CTC compressor on the test split", "", ctc_report_markdown(ctc["test"])]
    lines += _heldout_section(ctc, heldout, heldout_per_group, peer)
    lines += ["", "## Two test files (the model's own output)", ""]
    for e in examples:
        lines += [f"- `{Path(e['audio']).name}` ({e['src_text']})",
                  f"  - translate: {e['translation']}  (reference: {e['reference']})",
                  f"  - transcribe: {e['transcript']}"]
    lines += ["", "## Wall time per stage (seconds, this machine)", "",
              "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += [f"| **total (without installation)** | **{sum(timings.values()):.0f}** |"]
    lines += ["", "Reused from an earlier run with the same settings and inputs (stage keys in "
              "`stage-keys.json`): " + (", ".join(reused) if reused else "nothing") + "."]
    return "\n".join(lines) + "\n"
