"""``speechllama experiment paper``: the paper's systems side by side, in one resumable command.

Trains one CTC compressor, then every system with the same stage-2 budget, evaluates each on the
same test rows, runs Whisper-base as an external reference, and writes a table, a JSON file, a
bar chart and a verdict on each of the paper's claims (1)-(5). Finished runs are skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..checkpoint import latest_checkpoint
from ..config import load_config
from ..errors import UsageError
from ..evaluation.evaluate import out_file
from ..evaluation.statistics import ALPHA, LEARNED, paired_p, verdict
from ..inference.export import export_model
from .budgets import STAGE1, STAGE2, WHISPER, WHISPER_STAGE1, WHISPER_STAGE2
from .stages import StageKeys, Timings, cached, file_key, keyed_train

# name -> stage-2 overrides; every system gets the same data, steps and wall-time cap
SYSTEMS = {
    "speech-llama": [],  # average compression, non-causal audio mask, LoRA r=2 on q,k,v,o,
    #                      the piece prior (the LLM's embedding of each vector's greedy CTC label)
    "remove-blank": ["speech_llm.compression=remove_blank"],
    "causal-mask": ["speech_llm.audio_mask=causal"],
    "no-lora": ["llm.lora_rank=0"],
    "no-compression": ["speech_llm.compression=none"],
    # its LLM starts from random weights: its embeddings of the CTC labels would be no prior
    "decoder-only-scratch": ["llm.init=scratch", "llm.lora_rank=0", "speech_llm.piece_prior=false"],
    "encoder-decoder": ["speech_llm.system=encoder_decoder", "llm.lora_rank=0",
                        "speech_llm.piece_prior=false"],
    # the control: Speech-LLaMA trained the same way with its audio vectors replaced by zeros;
    # whatever it scores comes from the instruction and the target-text prior alone
    "zero-audio": ["speech_llm.zero_audio=true"],
    # the backbone as a row: Speech-LLaMA on the pretrained ear (a compressor of its own, the
    # demo's ear settings on every training recording; one vector per LLM token)
    "whisper-ear": ["speech_llm.spans=llm_tokens"],
}
EARS = {"whisper-ear": ["compressor.backbone=whisper-base"] + WHISPER_STAGE1}  # system -> its stage 1
# ``--ear whisper-base``: every system on the demo's pretrained ear (one compressor, the demo's ear
# settings in both stages). The systems whose LLM starts from random weights take one vector per
# CTC label (an LLM-token span starts from an embedding they do not have), no compression one
# per frame; the encoder-decoder reads the same frozen Whisper encoder (models/build.py).
EAR_SYSTEMS = {"no-compression": ["speech_llm.spans=labels"],
               "decoder-only-scratch": ["speech_llm.spans=labels"],
               "encoder-decoder": ["speech_llm.spans=labels"]}


def merge_train(corpora: list[Path], out: Path) -> Path:
    """One training manifest from several corpora (ids prefixed with the corpus name)."""
    from dataclasses import replace

    from ..data import read_manifest, write_manifest

    rows = [replace(u, id=f"{c.name}/{u.id}") for c in corpora for u in read_manifest(c / "train.jsonl")]
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "train.jsonl", rows)
    return out / "train.jsonl"


def run_paper(data: Path, out: Path, name: str = "paper-table", extra_train: list[Path] = (),
              per_group: int = 20, whisper: bool = True, overrides: list[str] = (),
              compressor: Path | None = None, minutes: float | None = None,
              steps: int | None = None, command: str = "", ear: str = "scratch") -> Path:
    """Train (or reuse ``compressor``) the CTC compressor, then every system of SYSTEMS with the
    demo's stage-2 settings, and write OUT/NAME.md, .json and .png. The stage-2 budget per system
    is the demo's unless ``minutes`` (wall-time cap) or ``steps`` (exactly that many steps, no
    time cap: the same data for every system, and a result that does not depend on the machine's
    load) is given. ``ear``: ``scratch`` (the paper's compressor; the pretrained ear as one more
    row) or ``whisper-base`` (every system on the demo's pretrained ear, EAR_SYSTEMS). ``command``
    is printed in the table as its reproduction."""
    from ..evaluation.evaluate import evaluate_model

    if whisper:  # fail now, not after an hour of training
        from ..evaluation.whisper_peer import whisper_model_dir

        whisper_model_dir()
    if ear not in ("scratch", "whisper-base"):
        raise UsageError(f"--ear {ear}: choose scratch or whisper-base")
    on_ear = ear == "whisper-base"
    ear1, ear2 = (WHISPER + WHISPER_STAGE1, WHISPER + WHISPER_STAGE2) if on_ear else ([], [])
    if on_ear and compressor is not None and load_config(compressor / "config.yaml"
                                                         ).compressor.backbone != ear:
        raise UsageError(f"{compressor}: not a compressor on the {ear} ear (--ear {ear})")
    runs = out / f"{name}-runs"
    runs.mkdir(parents=True, exist_ok=True)
    t, keys = Timings(runs), StageKeys(runs)
    train = merge_train([data, *extra_train], runs / "data") if extra_train else data / "train.jsonl"
    common = [f"data.train={train}", f"data.dev={data / 'dev.jsonl'}"]
    corpus = [file_key(train), file_key(data / "test.jsonl")]
    ctc_keys = {}
    if compressor is None:
        compressor = runs / "ctc"
        ctc_keys["ctc"] = keyed_train(t, keys, "ctc", "ctc", compressor,
                                      common + STAGE1 + ear1 + list(overrides), 2, corpus)
    else:  # given: keyed by its weights
        ctc_keys["ctc"] = file_key(latest_checkpoint(compressor) / "model.safetensors")
    compressors = {}
    for system, ear_settings in ({} if on_ear else EARS).items():
        compressors[system] = runs / f"ctc-{system}"
        ctc_keys[system] = keyed_train(t, keys, f"ctc-{system}", "ctc", compressors[system],
                                       common + STAGE1 + ear_settings + list(overrides), 2, corpus)
    # --minutes/--steps win over positional overrides (they come last)
    budget = [f"train.max_minutes={minutes}"] if minutes else []
    budget += [f"train.max_steps={steps}", "train.max_minutes=0"] if steps else []
    results = {}
    systems = {k: v for k, v in SYSTEMS.items() if not (on_ear and k in EARS)}
    for system, extra in systems.items():
        run_dir = runs / system
        key = keyed_train(t, keys, system, "speech-llm", run_dir,
                          ["--compressor", str(compressors.get(system, compressor))] + common
                          + STAGE2 + ear2 + extra + (EAR_SYSTEMS.get(system, []) if on_ear else [])
                          + list(overrides) + budget,
                          1, corpus + [ctc_keys.get(system, ctc_keys["ctc"])])
        model_dir = export_model(latest_checkpoint(run_dir), runs / f"{system}-model")
        report_file = runs / f"{system}-test.json"
        report = cached(keys, report_file, [key, per_group], lambda: evaluate_model(
            model_dir, data / "test.jsonl", out=report_file, per_group=per_group,
            ceiling=system == "speech-llama"))
        results[system] = _summary(report, t.data.get(system))
    if whisper:
        results["whisper-base"] = _whisper(keys, data / "test.jsonl", per_group, runs)
    return write_table(results, out / name, data, per_group, command)


def _summary(report: dict, train_s: float | None) -> dict:
    st = {r["pair"]: r["bleu"] for r in report["table"] if r["task"] == "st" and r["subset"] == "all"}
    return {"bleu": st, "macro_bleu": report["macro"].get("st_bleu_all"),
            "macro_bleu_numbers": report["macro"].get("st_bleu_numbers"),
            "macro_bleu_sentences": report["macro"].get("st_bleu_sentences"),
            "asr_wer": report["macro"].get("asr_wer_all"), **report["parameters"],
            "train_seconds": train_s, "rtfx": report["rtfx"], "ceiling": _ceiling(report)}


def _ceiling(report: dict) -> dict | None:
    """The frozen LLM's text-MT BLEU on the same ST rows (evaluate.text_mt_ceiling), if measured."""
    c = report.get("text_mt_ceiling")
    if c is None:
        return None
    return {"bleu": {r["pair"]: r["bleu"] for r in c["table"] if r["subset"] == "all"},
            "macro_bleu": c["macro"].get("st_bleu_all")}


def _whisper(keys: StageKeys, manifest: Path, per_group: int, runs: Path) -> dict:
    """Whisper-base (beam 5, int8) on the same test rows: it translates the ST rows and transcribes
    the ASR rows (evaluate.evaluate_whisper); keyed by the rows, so a changed test split reruns it."""
    from ..evaluation.evaluate import evaluate_whisper

    out = runs / "whisper-base-test"
    report = cached(keys, out_file(out, ".json"), ["whisper-base", file_key(manifest), per_group],
                     lambda: evaluate_whisper(manifest, out, per_group))
    return _summary(report, None)


def claims(results: dict, runs: Path) -> list[tuple[str, str, str]]:
    """The paper's claims (1)-(5): (statement, verdict, evidence)."""
    b = {k: v["macro_bleu"] or 0.0 for k, v in results.items()}
    base = max(("encoder-decoder", "decoder-only-scratch"), key=lambda k: b[k])
    ratio = results["decoder-only-scratch"]["total"] / results["encoder-decoder"]["total"]
    size, why = verdict(results, runs, "decoder-only-scratch", "encoder-decoder", same=True)
    if ratio >= 0.7:
        size = "not reproduced"
    return [
        ("(1) Speech-LLaMA beats the strongest baseline trained from scratch (paper: up to +5.6 BLEU)",
         *verdict(results, runs, "speech-llama", base)),
        ("(2) frame-averaging beats blank-removing (paper: +1.5 BLEU)",
         *verdict(results, runs, "speech-llama", "remove-blank")),
        ("(3) the non-causal audio mask beats the causal one",
         *verdict(results, runs, "speech-llama", "causal-mask")),
        ("(4) LoRA on the frozen LLM helps", *verdict(results, runs, "speech-llama", "no-lora")),
        ("(5) a decoder-only model from scratch matches the encoder-decoder with ~40% fewer "
         "parameters", size, f"{why}; {ratio:.2f}x the parameters"),
    ]


def control(results: dict, runs: Path) -> str:
    """Speech-LLaMA against the same training with its audio replaced by zeros."""
    s, z = results["speech-llama"], results["zero-audio"]
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    bleu = None if None in (s["macro_bleu"], z["macro_bleu"]) else s["macro_bleu"] - z["macro_bleu"]
    wer = None if None in (s["asr_wer"], z["asr_wer"]) else s["asr_wer"] - z["asr_wer"]
    p = paired_p(runs, "speech-llama", "zero-audio")
    return (f"Speech-LLaMA minus the zero-audio control (same data, budget and settings; only the "
            f"instruction and the text prior to go on): BLEU {'–' if bleu is None else f'{bleu:+.1f}'}"
            f"{'' if p is None else f' (paired bootstrap p={p:.2f})'}, "
            f"ASR WER {'–' if wer is None else f'{wer:+.1f}'} points (control: BLEU "
            f"{fmt(z['macro_bleu'])}, WER {fmt(z['asr_wer'])}).")


def write_table(results: dict, out: Path, data: Path, per_group: int, command: str = "",
                runs: Path | None = None) -> Path:
    runs = runs or out.parent / f"{out.name}-runs"
    pairs = sorted({p for r in results.values() for p in r["bleu"]})
    lines = [f"# The paper's systems on `{data}` (test split, first {per_group} rows per task, "
             "language pair and subset)", ""]
    if command:
        lines += [f"Reproduce: `{command}`", ""]
    lines += [
             "| system | " + " | ".join(f"BLEU {p}" for p in pairs) +
             " | BLEU avg | BLEU numbers | BLEU sentences | ASR WER % | trainable | total | train s | RTFx |",
             "|---|" + "---:|" * (len(pairs) + 8)]
    fmt = lambda v, f="{:.1f}": "–" if v is None else f.format(v)  # noqa: E731
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(fmt(r["bleu"].get(p)) for p in pairs) +
                     f" | **{fmt(r['macro_bleu'])}** | {fmt(r['macro_bleu_numbers'])} | "
                     f"{fmt(r['macro_bleu_sentences'])} | {fmt(r['asr_wer'])} | "
                     f"{r['trainable'] / 1e6:.2f}M | {r['total'] / 1e6:.1f}M | "
                     f"{fmt(r['train_seconds'], '{:.0f}')} | {fmt(r['rtfx'])} |")
    for name, r in results.items():
        if r.get("ceiling"):
            c = r["ceiling"]
            lines += ["", f"Text-MT ceiling: the frozen LLM of `{name}` translating the reference "
                          "transcripts of the same ST rows (same prompt, LoRA off): "
                          + ", ".join(f"{p} {fmt(c['bleu'].get(p))}" for p in pairs)
                          + f"; average **{fmt(c['macro_bleu'])}** BLEU."]
    lines += ["", "## The paper's claims", ""]
    lines += [f"- {text}: **{ok}** ({why})" for text, ok, why in claims(results, runs)]
    lines += ["", f"Verdicts: a claim is *inconclusive* when both systems are below {LEARNED:.0f} "
              f"BLEU, when the better one does not significantly beat the zero-audio control, or "
              f"when their difference is not significant (paired bootstrap over the ST rows, "
              f"p >= {ALPHA})."]
    if "zero-audio" in results:
        lines += ["", "## Control", "", control(results, runs)]
    md, chart = out_file(out, ".md"), out_file(out, ".png")
    lines += ["", f"![BLEU by system]({chart.name})"]
    md.write_text("\n".join(lines) + "\n")
    out_file(out, ".json").write_text(json.dumps(results, indent=1))
    _chart(results, chart)
    print(md.read_text(), file=sys.stderr)
    return md


def _chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    values = [results[n]["macro_bleu"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1))
    ax.barh(names[::-1], values[::-1], color="#4477aa")
    ax.set_xlabel("BLEU (macro average over language pairs, X -> en)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
