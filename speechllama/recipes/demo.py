"""The default demo, end to end, as the CLI commands a user would run:

corpus -> stage 1 (CTC compressor) -> its evaluation -> stage 2 (audio encoder + LoRA on the
default LLM, Gemma-3-270M) and the zero-audio control -> evaluation on the test split -> the
exported model translates and transcribes two test files.

Stage 1 runs as ``torchrun --nproc_per_node N`` (default 2 one-thread ranks: the small compressor's
matrices do not scale across threads; bench/bench_ddp.py, side by side: two ranks 1.32x a plain
2-thread process, 1.63x one with OMP_WAIT_POLICY=PASSIVE); stage 2 runs as one process with all
threads (one 2-thread process 1.07x two ranks). See docs/bench.md. Every stage is skipped when
already complete and training resumes, so an interrupted demo continues.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from ..checkpoint import latest_checkpoint
from ..config import load_config
from ..errors import UsageError
from ..evaluation.reports import FEATURES_STAGE
from ..inference.export import export_model
from .budgets import (
    CTC_PER_GROUP,
    EVAL_PER_GROUP,
    HELDOUT,
    HELDOUT_PER_GROUP,
    PRESETS,
    STAGE1,
    STAGE2,
    WHISPER,
    WHISPER_STAGE1,
    WHISPER_STAGE2,
)
from .stages import StageKeys, Timings, cached, file_key, keyed_train


def run_demo(out: str | os.PathLike = "runs/demo", procs: int = 2, control: bool = True,
             overrides: list[str] = (), preset: str = "demo") -> Path:
    """Build, train, evaluate; returns the path of report.md.

    ``overrides`` (``section.key=value``): ``corpus.*`` shape the corpus (``CorpusConfig``), the
    rest apply to both training stages, after the demo's own and the ``preset``'s (PRESETS).
    """
    from ..evaluation.evaluate import evaluate_model, evaluate_whisper

    if preset not in PRESETS:
        raise UsageError(f"--preset {preset}: choose one of {', '.join(PRESETS)}")
    recipe = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t, keys, data = Timings(out), StageKeys(out), out / "data"
    corpus = list(recipe.corpus) + [o for o in overrides if o.strip().startswith("corpus.")]
    overrides = list(recipe.both) + [o for o in overrides if not o.strip().startswith("corpus.")]
    if recipe.whisper:  # fail now, not after an hour of training
        from ..evaluation.whisper_peer import whisper_model_dir

        whisper_model_dir()
    _corpus(t, data, load_config(None, corpus).corpus)
    heldout = {name: data / f"heldout-{name}.jsonl" for name in HELDOUT if (data / f"heldout-{name}.jsonl").exists()}
    args = ["--data", str(data)]
    ear, stage1 = demo_ear(overrides)
    if torch.cuda.is_available() and procs > torch.cuda.device_count():
        procs = torch.cuda.device_count()  # ranks of a GPU run: one per GPU (NCCL)
    corpus_key = file_key(data / "stats.json")  # the corpus's settings and what it holds
    s1_args = args + STAGE1 + stage1 + list(recipe.stage1) + overrides
    features = (lambda: t.run(FEATURES_STAGE, _cache_features, s1_args)) if ear else None
    s1 = keyed_train(t, keys, "stage 1: CTC compressor", "ctc", out / "ctc", s1_args, procs,
                     [corpus_key], before=features)  # the frozen encoder's features: all threads
    # the same sample of recordings as stage 1
    overrides = ear + (WHISPER_STAGE2 if ear else []) + list(recipe.stage2) + overrides
    ctc = {}
    for name, manifest in {"test": data / "test.jsonl", **heldout}.items():
        suffix = "test" if name == "test" else f"heldout-{name}"
        ctc[name] = cached(keys, out / f"ctc-{suffix}.json", [s1, CTC_PER_GROUP], lambda m=manifest, s=suffix: t.run(
            f"stage 1: evaluation ({s})", _evaluate_ctc, out / "ctc", m, out / f"ctc-{s}"))
    runs = {"speech-llm": []} | ({"zero-audio control": ["speech_llm.zero_audio=true"]} if control else {})
    reports, heldout_reports = {}, {}
    for name, extra in runs.items():
        run_dir = out / name.replace(" ", "-")
        s2 = keyed_train(t, keys, f"stage 2: {name}", "speech-llm", run_dir,
                         args + ["--compressor", str(out / "ctc")] + STAGE2 + extra + overrides, 1,
                         [corpus_key, s1])
        model_dir = export_model(latest_checkpoint(run_dir),
                                 out / ("model" if not extra else f"{run_dir.name}-model"))
        weights = [s2, EVAL_PER_GROUP, HELDOUT_PER_GROUP]  # what each evaluation depends on
        reports[name] = cached(keys, out / f"{run_dir.name}-test.json", weights, lambda: t.run(
            f"evaluation: {name}", evaluate_model, model_dir, data / "test.jsonl",
            out=out / f"{run_dir.name}-test", per_group=EVAL_PER_GROUP, ceiling=not extra))
        if extra:
            continue
        for held, manifest in heldout.items():  # the model that listens, on voices it never heard
            heldout_reports[held] = cached(keys, out / f"{run_dir.name}-heldout-{held}.json", weights, lambda m=manifest, h=held: t.run(
                f"evaluation: held-out {h}", evaluate_model, model_dir, m, out=out / f"{run_dir.name}-heldout-{h}",
                per_group=HELDOUT_PER_GROUP, ceiling=False, llm_alone=False))
    peer = {}  # Whisper-base on the same rows: the test split and each held-out set
    for name, manifest in ({"test": data / "test.jsonl", **heldout} if recipe.whisper else {}).items():
        suffix = "test" if name == "test" else f"heldout-{name}"
        per_group = EVAL_PER_GROUP if name == "test" else HELDOUT_PER_GROUP
        peer[name] = cached(keys, out / f"whisper-base-{suffix}.json", ["whisper-base", corpus_key, per_group],
                             lambda m=manifest, s=suffix, g=per_group: t.run(
                                 f"Whisper-base ({s})", evaluate_whisper, m, out / f"whisper-base-{s}", g))
    examples = t.run("inference examples", _examples, out / "model", data / "test.jsonl")
    from ..evaluation.reports import demo_report

    report = out / "report.md"
    report.write_text(demo_report(out, data, ctc, reports, heldout_reports, examples, t.data,
                                  EVAL_PER_GROUP, HELDOUT_PER_GROUP, keys.reused, peer,
                                  "" if preset == "demo" else preset))
    print(report.read_text())
    return report


def demo_ear(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the settings of the demo's ear for both stages, its stage-1 settings): the pretrained
    Whisper-base ear unless ``overrides`` pick another ``compressor.backbone`` (the paper's
    ``scratch``: then the demo's from-scratch settings alone)."""
    chosen = [o.split("=", 1)[1].strip() for o in overrides if o.strip().startswith("compressor.backbone=")]
    if chosen and chosen[-1] != "whisper-base":
        return [], []
    return WHISPER, WHISPER + WHISPER_STAGE1


def _cache_features(args: list[str]) -> None:
    """Compute stage 1's cached features in this process (all threads) before its ranks start
    (under torchrun rank 0 computes them alone, on one thread)."""
    from ..training.ctc import recordings

    data = Path(args[args.index("--data") + 1])
    cfg = load_config(None, [a for a in args if "=" in a and not a.startswith("--")]
                      + [f"data.train={data / 'train.jsonl'}"])
    recordings(cfg)


def _corpus(t: Timings, data: Path, cfg) -> None:
    """Build the corpus unless ``data`` already holds one built with the same settings (a
    rebuild keeps every wav that is still wanted)."""
    from ..data import build_demo
    from ..data.demo import corpus_kwargs

    kwargs = corpus_kwargs(cfg)
    stats = data / "stats.json"
    if not stats.exists() or json.loads(stats.read_text()).get("config") != json.loads(json.dumps(kwargs)):
        t.run("corpus", build_demo, data, **kwargs)


def _evaluate_ctc(checkpoint: Path, manifest: Path, out: Path) -> dict:
    from ..evaluation.evaluate import ctc_report_markdown, evaluate_ctc, write_report

    report = evaluate_ctc(checkpoint, manifest, per_group=CTC_PER_GROUP)
    write_report(report, out, ctc_report_markdown(report))
    return report


def _examples(model_dir: Path, manifest: Path) -> list[dict]:
    """Translate and transcribe two test recordings with the exported model; print them."""
    from .. import load
    from ..data import read_manifest

    model = load(model_dir)
    rows = [u for u in read_manifest(manifest) if u.task == "st"][:2]
    translations = model.translate([u.audio for u in rows], src_lang=None)
    transcripts = model.transcribe([u.audio for u in rows], src_lang=None)
    examples = []
    for u, tr, asr in zip(rows, translations, transcripts):
        examples.append({"audio": u.audio, "src_text": u.src_text, "reference": u.tgt_text,
                         "translation": tr, "transcript": asr})
        print(f"{u.audio}\n  translate : {tr}\n  reference : {u.tgt_text}\n"
              f"  transcribe: {asr}\n  source    : {u.src_text}", file=sys.stderr)
    return examples
