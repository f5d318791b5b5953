"""Is a difference more than chance? sacrebleu's paired bootstrap between two systems' ST rows, and
the verdict rule on the paper's claims (docs/experiments.md)."""

from __future__ import annotations

import json
from pathlib import Path

LEARNED = 1.0  # macro BLEU below which a system has not learned the task: no verdict between two


ALPHA = 0.05  # significance level of the paired bootstrap


CONTROL = "zero-audio"  # a system must beat this to have learned anything from the audio


def paired_p(runs: Path, a: str, b: str, split: str = "test") -> float | None:
    """p-value that ``a`` and ``b`` differ in BLEU: sacrebleu's paired bootstrap (1000 resamples,
    fixed seed) on the ST rows both scored (pooled over language pairs; RUNS/SYSTEM-SPLIT.hyp.jsonl);
    None without hypotheses."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    def st(system: str) -> dict:
        f = runs / f"{system}-{split}.hyp.jsonl"
        rows = map(json.loads, f.read_text().splitlines()) if f.exists() else []
        return {r["id"]: r for r in rows if r["task"] == "st"}

    ha, hb = st(a), st(b)
    ids = sorted(set(ha) & set(hb))
    if len(ids) < 2:
        return None
    if all(ha[i]["hyp"] == hb[i]["hyp"] for i in ids):
        return 1.0  # sacrebleu's bootstrap degenerates (p = 1/(n+1)) on identical outputs
    test = PairedTest([(a, [ha[i]["hyp"] for i in ids]), (b, [hb[i]["hyp"] for i in ids])],
                      {"BLEU": BLEU()}, [[ha[i]["ref"] for i in ids]], test_type="bs",
                      n_samples=1000)
    return test()[1]["BLEU"][1].p_value


def verdict(results: dict, runs: Path, a: str, b: str, same: bool = False) -> tuple[str, str]:
    """Does ``a`` beat ``b`` (``same``: match it)? (verdict, evidence): reproduced, not reproduced,
    or inconclusive when neither system has learned the task or the difference is not significant."""
    x, y = results[a]["macro_bleu"], results[b]["macro_bleu"]
    if x is None or y is None:
        return "inconclusive", "no BLEU"
    p = paired_p(runs, a, b)
    why = f"{x - y:+.1f} BLEU vs {b}" + ("" if p is None else f", paired bootstrap p={p:.2f}")
    if max(x, y) < LEARNED:
        return "inconclusive", why + f"; both below {LEARNED:.0f} BLEU, neither has learned the task"
    best = a if x >= y else b
    if CONTROL in results and best != CONTROL:
        z, pz = results[CONTROL]["macro_bleu"], paired_p(runs, best, CONTROL)
        if z is not None and (results[best]["macro_bleu"] <= z or pz is None or pz >= ALPHA):
            return "inconclusive", why + (f"; {best} does not significantly beat the zero-audio "
                                          f"control (p={'–' if pz is None else f'{pz:.2f}'}): "
                                          "its BLEU comes from the text prior, not from listening")
    significant = p is not None and p < ALPHA
    if same:
        return ("not reproduced" if significant and x < y else "reproduced"), why
    if not significant:
        return "inconclusive", why + " (not significant)"
    return ("reproduced" if x > y else "not reproduced"), why
