"""The default demo, end to end: corpus -> stage 1 (CTC compressor) -> evaluation -> report.

Every stage writes under ``out`` and is skipped when already complete, so an interrupted demo
continues where it stopped. Wall time per stage goes into the report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .checkpoint import latest_checkpoint, read_json
from .config import ExperimentConfig, load_config, save_config


def _stage(name: str, timings: dict, out: Path):
    """Context manager that times a stage and records it in out/timings.json."""

    class _Timer:
        def __enter__(self):
            print(f"\n== {name} ==", file=sys.stderr, flush=True)
            self.start = time.time()

        def __exit__(self, exc_type, *_):
            if exc_type is None:
                timings[name] = round(time.time() - self.start, 1) + timings.get(name, 0.0)
                (out / "timings.json").write_text(json.dumps(timings, indent=1))

    return _Timer()


def _finished(run_dir: Path, max_steps: int) -> bool:
    last = latest_checkpoint(run_dir) if run_dir.exists() else None
    return last is not None and read_json(last / "trainer.json")["step"] >= max_steps


def run_demo(out: str | os.PathLike = "runs/demo", config: str | None = None,
             overrides: list[str] = (), sentences: int | None = None, numbers: int = 300,
             langs: str = "de,fr,es,it,nl,cs") -> Path:
    """Build the demo corpus, train and evaluate; returns the path of report.md."""
    from .data import build_demo
    from .evaluate import ctc_report_markdown, evaluate_ctc, write_report
    from .tasks.ctc import CTCTask
    from .train import fit

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    data = out / "data"
    with _stage("corpus", timings, out):
        if not (data / "stats.json").exists():
            build_demo(data, langs=tuple(langs.split(",")), sentences_per_lang=sentences,
                       numbers_per_lang=numbers)
        else:
            print(f"{data}: already built", file=sys.stderr)
    cfg: ExperimentConfig = load_config(config, [f"data.train={data / 'train.jsonl'}",
                                                 f"data.dev={data / 'dev.jsonl'}", *overrides])
    ctc_run = out / "ctc"
    with _stage("stage 1: CTC compressor", timings, out):
        if not _finished(ctc_run, cfg.train.max_steps):
            last = latest_checkpoint(ctc_run) if ctc_run.exists() else None
            if last is not None:
                cfg = load_config(last / "config.yaml", list(overrides))
            task = CTCTask(cfg, resume_from=last)
            ctc_run.mkdir(parents=True, exist_ok=True)
            save_config(cfg, ctc_run / "config.yaml")
            fit(task, cfg, ctc_run, resume=last is not None)
    with _stage("evaluation", timings, out):
        report = evaluate_ctc(ctc_run, data / "test.jsonl")
        md = ctc_report_markdown(report)
        write_report(report, out / "ctc-test", md)
    print(md)
    return _write_demo_report(out, data, report, timings)


def _write_demo_report(out: Path, data: Path, ctc: dict, timings: dict) -> Path:
    from .evaluate import ctc_report_markdown

    stats = json.loads((data / "stats.json").read_text())
    lines = ["# speechllama demo report", "",
             "Reproduce: `bash scripts/demo.sh` (or `speechllama demo --out runs/demo`).", "",
             "## Corpus", "", "```", json.dumps(stats, indent=1, ensure_ascii=False)[:3000], "```",
             "", "## Stage 1: CTC compressor on the test split (unseen sentences)", "",
             ctc_report_markdown(ctc), "", "Examples (reference -> greedy CTC output):", ""]
    lines += [f"- `{e['ref']}` -> `{e['hyp']}`" for e in ctc["examples"]]
    lines += ["", "## Wall time per stage (seconds, this machine)", "",
              "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
