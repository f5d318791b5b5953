"""Scores: WER/CER (jiwer, after ``text.normalize``), BLEU and chrF (sacrebleu) per task, language
pair and subset, and the rows an evaluation takes (the first N of each group)."""

from __future__ import annotations

from collections import defaultdict

import jiwer

from ..text import normalize


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus WER and CER in percent after normalisation; an empty hypothesis counts as deletions."""
    refs_n = [normalize(r) for r in refs]
    hyps_n = [normalize(h) for h in hyps]
    keep = [i for i, r in enumerate(refs_n) if r]
    refs_n, hyps_n = [refs_n[i] for i in keep], [hyps_n[i] for i in keep]
    if not refs_n:
        return {"wer": float("nan"), "cer": float("nan")}
    return {"wer": 100 * jiwer.wer(refs_n, hyps_n), "cer": 100 * jiwer.cer(refs_n, hyps_n)}


def subset_of(utt_id: str) -> str:
    """Demo-corpus convention: number-expression rows have '-num-' in their id."""
    return "numbers" if "-num-" in utt_id else "sentences"


def number_kind(utt_id: str) -> str | None:
    """The num2words kind (cardinal, year, ordinal) of a number row ``<lang>-num-<kind>-<n>-<task>``;
    None for a sentence row."""
    return utt_id.split("-num-")[1].split("-")[0] if subset_of(utt_id) == "numbers" else None


def translation_scores(refs: list[str], hyps: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu, default 13a tokenisation) with their signatures."""
    import sacrebleu

    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    return {"bleu": bleu.corpus_score(hyps, [refs]).score, "chrf": chrf.corpus_score(hyps, [refs]).score,
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


def score_rows(rows: list[dict]) -> dict:
    """rows: {id, task, src_lang, tgt_lang, ref, hyp}. Scores per language pair, subset and macro."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], f"{r['src_lang']}-{r['tgt_lang']}", subset_of(r["id"]))].append(r)
        groups[(r["task"], f"{r['src_lang']}-{r['tgt_lang']}", "all")].append(r)
    table = []
    for (task, pair, subset), rs in sorted(groups.items()):
        refs, hyps = [r["ref"] for r in rs], [r["hyp"] for r in rs]
        scores = translation_scores(refs, hyps) if task == "st" else error_rates(refs, hyps)
        table.append({"task": task, "pair": pair, "subset": subset, "n": len(rs), **scores})
    macro = {}
    for task, key in (("st", "bleu"), ("st", "chrf"), ("asr", "wer"), ("asr", "cer")):
        for subset in ("all", "numbers", "sentences"):
            vals = [t[key] for t in table if t["task"] == task and t["subset"] == subset]
            if vals:
                macro[f"{task}_{key}_{subset}"] = sum(vals) / len(vals)
    return {"table": table, "macro": macro}


def first_per_group(utts: list, per_group: int | None) -> list:
    """The first ``per_group`` rows of each (task, language pair, numbers/sentences) group."""
    if not per_group:
        return utts
    seen: dict[tuple, int] = defaultdict(int)
    kept = []
    for u in utts:
        key = (u.task, u.src_lang, u.tgt_lang, subset_of(u.id))
        if seen[key] < per_group:
            seen[key] += 1
            kept.append(u)
    return kept
