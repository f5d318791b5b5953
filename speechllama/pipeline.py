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

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import latest_checkpoint, read_json
from .config import load_config
from .export import export_model
from .report import FEATURES_STAGE
from .errors import UsageError, UserError

# Demo settings: sized so the whole demo, installation and the zero-audio control included, fits
# 15 minutes on 2 cores (docs/design.md, "The demo's budget"). Steps and minutes are both set: the
# step count (what the cosine schedule decays over) is what fits the time on this machine; the cap
# keeps a slower machine within the budget. Dropout is off in stage 1: at this budget the
# compressor underfits, and CPU dropout costs ~20% of a step. The CTC labels are characters (the
# config default), which learn fastest here.
STAGE1 = ["train.max_steps=1000", "train.max_minutes=3.0", "train.bf16=true", "compressor.dropout=0.0",
          "features.spec_augment=false", "train.checkpoint_every=250"]
# The demo's ear (docs/design.md, "A pretrained ear"): the Whisper-base encoder, frozen, its output
# computed once for a 1.25-hour sample of the training recordings (both stages train on that sample)
# and cached; on top, frames stacked to 25 a second, a CTC head of 2 Transformer layers on
# character labels, ~30 s of audio a batch. The settings are the best of a sweep on dev at this
# budget (docs/design.md). `compressor.backbone=scratch` gives the paper's from-scratch compressor
# with the settings above instead.
WHISPER = ["compressor.backbone=whisper-base", "data.max_hours=1.25", "speech_llm.spans=llm_tokens"]
WHISPER_STAGE1 = ["compressor.d_model=256", "compressor.n_layers=2", "compressor.n_heads=4",
                  "compressor.ff_dim=1024", "compressor.char_layer=0", "compressor.backbone_stack=2",
                  "data.max_frames=1500", "train.lr=3e-3", "train.warmup_steps=30",
                  "train.max_steps=600", "train.max_minutes=2.0"]
# stage 2 on the ear: its features are 50 a second (fbank's 100), so the same ~32 s of audio a batch
WHISPER_STAGE2 = ["data.max_frames=1600"]
STAGE2 = ["train.max_steps=80", "train.max_minutes=2.2", "train.bf16=true", "train.lr=1.5e-3",
          "train.warmup_steps=20", "features.spec_augment=false", "data.max_frames=3200",
          "train.checkpoint_every=40", "train.log_every=10"]
EVAL_PER_GROUP = 10  # test rows per (task, language pair, numbers/sentences): ~240 rows
HELDOUT = ("kokoro", "real")  # the held-out sets the corpus writes (heldout-<name>.jsonl)
HELDOUT_PER_GROUP = 8  # the model's rows per group on each held-out set
CTC_PER_GROUP = 20  # the compressor's recordings per group (task, language pair, subset) on each set


@dataclass(frozen=True)
class Preset:
    """A named recipe of ``speechllama demo --preset NAME``: settings that come after the demo's
    own (and before the user's overrides, which still win)."""

    about: str
    corpus: tuple[str, ...] = ()  # corpus.* settings
    both: tuple[str, ...] = ()  # both training stages
    stage1: tuple[str, ...] = ()
    stage2: tuple[str, ...] = ()  # Speech-LLaMA and its zero-audio control alike
    whisper: bool = False  # score Whisper-base on the same rows of the test split and held-out sets


PRESETS = {
    "demo": Preset("the 15-minute demo (scripts/demo.sh)"),
    # The longer recipe (docs/design.md, "The quality preset"): at most 2 hours here. More voices
    # (Kokoro's training voices, 100 lines a language), a 4-hour training sample for both stages
    # (the ear's features ~7 min), the ear's best head on dev at a longer budget (4 CTC layers,
    # docs/design.md "A pretrained ear"), 15x the demo's stage-2 steps for the model and its
    # control, and Whisper-base scored on the same rows.
    "quality": Preset("the longer recipe, at most 2 hours on 2 cores",
                      corpus=("corpus.kokoro_per_lang=100",),
                      both=("data.max_hours=4",),
                      stage1=("compressor.n_layers=4", "train.max_steps=1500", "train.max_minutes=12"),
                      stage2=("train.max_steps=1200", "train.max_minutes=32", "train.checkpoint_every=100",
                              "train.log_every=50"),
                      whisper=True),
}


# Bump when a stage's output changes for the same settings (a model or evaluation format change):
# every stage keyed with it is then redone rather than reused.
FORMAT_VERSION = 3


class StageError(UserError, RuntimeError):
    """A pipeline stage that failed in its own process (its messages are already printed)."""


def stage_key(*parts) -> str:
    """What determines a stage's output (its settings, its inputs' keys, FORMAT_VERSION) as a short
    hash: a stage is reused only when its key is the one it was made with."""
    text = json.dumps([FORMAT_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_key(path: Path) -> str:
    """The sha256 of a file's content (a corpus's manifests and statistics), shortened."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class StageKeys:
    """Which key each stage's output was made with (out/stage-keys.json), and which stages this
    run reused."""

    def __init__(self, out: Path):
        self.file = out / "stage-keys.json"
        self.data = json.loads(self.file.read_text()) if self.file.exists() else {}
        self.reused: list[str] = []

    def current(self, name: str, key: str) -> bool:
        return self.data.get(name) == key

    def done(self, name: str, key: str, reused: bool) -> None:
        self.data[name] = key
        if reused:
            self.reused.append(name)
        self.file.write_text(json.dumps(self.data, indent=1))


class Timings:
    """Wall time per stage, persisted in out/timings.json."""

    def __init__(self, out: Path):
        self.file = out / "timings.json"
        self.data = json.loads(self.file.read_text()) if self.file.exists() else {}

    def forget(self, name: str) -> None:
        """Drop a stage's time (it is redone from scratch, not resumed)."""
        if self.data.pop(name, None) is not None:
            self.file.write_text(json.dumps(self.data, indent=1))

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n== {name} ==", file=sys.stderr, flush=True)
        start = time.time()
        result = fn(*args, **kwargs)
        self.data[name] = round(self.data.get(name, 0.0) + time.time() - start, 1)
        self.file.write_text(json.dumps(self.data, indent=1))
        return result


def keyed_train(t: Timings, keys: StageKeys, name: str, stage: str, run_dir: Path,
                args: list[str], procs: int, inputs: list[str], before=None) -> str:
    """:func:`_train` keyed by its settings and its inputs' keys: a finished run made with the same
    key is reused, an interrupted one resumed; a run made with other settings (or before keys
    existed) is deleted and trained again. ``before()`` runs first unless the run is reused.
    Returns the key."""
    key = stage_key(stage, args, inputs)
    if run_dir.exists() and not keys.current(name, key):
        print(f"{run_dir}: made with other settings or inputs: training it again", file=sys.stderr)
        shutil.rmtree(run_dir)
        t.forget(name)
    reused = _finished(run_dir)
    if before is not None and not reused:
        before()
    t.run(name, _train, stage, run_dir, args, procs)
    keys.done(name, key, reused)
    return key


def _train(stage: str, run_dir: Path, args: list[str], procs: int) -> None:
    """Run `speechllama train STAGE` (under torchrun when procs > 1), resuming if possible;
    a run that already ended is left as it is (continue one with `speechllama train --resume`)."""
    if _finished(run_dir):
        print(f"{run_dir}: already trained (same settings)", file=sys.stderr)
        return
    cmd = [sys.executable, "-m", "speechllama", "train", stage, "--out", str(run_dir), "--resume"]
    if procs > 1:
        cmd[1:3] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                    "-m", "speechllama"]
    env = dict(os.environ)
    if procs > 1:
        env["OMP_NUM_THREADS"] = "1"  # one thread per rank: the ranks are the parallelism
    else:
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    print("$ " + " ".join(cmd[1:] + args), file=sys.stderr, flush=True)
    code = run_child(cmd + args, env)
    if code != 0:
        raise StageError(f"training stage '{stage}' failed (exit status {code}, messages above); "
                         "rerun the same command to resume from the last checkpoint")


def run_child(cmd: list[str], env: dict | None = None) -> int:
    """Run ``cmd`` and return its exit status. When this process is interrupted (Ctrl-C, or
    SIGTERM, which ``cli.main`` turns into KeyboardInterrupt) the child gets SIGTERM and is waited
    for, so it stops cleanly (torchrun passes it on to its ranks) instead of running on alone."""
    child = subprocess.Popen(cmd, env=env)
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGTERM)
        child.wait()
        raise


def _finished(run_dir: Path) -> bool:
    """True when the run's last checkpoint ended training (max_steps or max_minutes reached)."""
    last = latest_checkpoint(run_dir) if run_dir.exists() else None
    return last is not None and bool(read_json(last / "trainer.json").get("final"))


def run_demo(out: str | os.PathLike = "runs/demo", procs: int = 2, control: bool = True,
             overrides: list[str] = (), preset: str = "demo") -> Path:
    """Build, train, evaluate; returns the path of report.md.

    ``overrides`` (``section.key=value``): ``corpus.*`` shape the corpus (``CorpusConfig``), the
    rest apply to both training stages, after the demo's own and the ``preset``'s (PRESETS).
    """
    from .evaluate import evaluate_model, evaluate_whisper

    if preset not in PRESETS:
        raise UsageError(f"--preset {preset}: choose one of {', '.join(PRESETS)}")
    recipe = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t, keys, data = Timings(out), StageKeys(out), out / "data"
    corpus = list(recipe.corpus) + [o for o in overrides if o.strip().startswith("corpus.")]
    overrides = list(recipe.both) + [o for o in overrides if not o.strip().startswith("corpus.")]
    if recipe.whisper:  # fail now, not after an hour of training
        from .whisper_peer import whisper_model_dir

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
        ctc[name] = _cached(keys, out / f"ctc-{suffix}.json", [s1, CTC_PER_GROUP], lambda m=manifest, s=suffix: t.run(
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
        reports[name] = _cached(keys, out / f"{run_dir.name}-test.json", weights, lambda: t.run(
            f"evaluation: {name}", evaluate_model, model_dir, data / "test.jsonl",
            out=out / f"{run_dir.name}-test", per_group=EVAL_PER_GROUP, ceiling=not extra))
        if extra:
            continue
        for held, manifest in heldout.items():  # the model that listens, on voices it never heard
            heldout_reports[held] = _cached(keys, out / f"{run_dir.name}-heldout-{held}.json", weights, lambda m=manifest, h=held: t.run(
                f"evaluation: held-out {h}", evaluate_model, model_dir, m, out=out / f"{run_dir.name}-heldout-{h}",
                per_group=HELDOUT_PER_GROUP, ceiling=False, llm_alone=False))
    peer = {}  # Whisper-base on the same rows: the test split and each held-out set
    for name, manifest in ({"test": data / "test.jsonl", **heldout} if recipe.whisper else {}).items():
        suffix = "test" if name == "test" else f"heldout-{name}"
        per_group = EVAL_PER_GROUP if name == "test" else HELDOUT_PER_GROUP
        peer[name] = _cached(keys, out / f"whisper-base-{suffix}.json", ["whisper-base", corpus_key, per_group],
                             lambda m=manifest, s=suffix, g=per_group: t.run(
                                 f"Whisper-base ({s})", evaluate_whisper, m, out / f"whisper-base-{s}", g))
    examples = t.run("inference examples", _examples, out / "model", data / "test.jsonl")
    from .report import demo_report

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
    from .tasks.ctc import recordings

    data = Path(args[args.index("--data") + 1])
    cfg = load_config(None, [a for a in args if "=" in a and not a.startswith("--")]
                      + [f"data.train={data / 'train.jsonl'}"])
    recordings(cfg)


def _corpus(t: Timings, data: Path, cfg) -> None:
    """Build the corpus unless ``data`` already holds one built with the same settings (a
    rebuild keeps every wav that is still wanted)."""
    from .data import build_demo
    from .data.demo import corpus_kwargs

    kwargs = corpus_kwargs(cfg)
    stats = data / "stats.json"
    if not stats.exists() or json.loads(stats.read_text()).get("config") != json.loads(json.dumps(kwargs)):
        t.run("corpus", build_demo, data, **kwargs)


def _evaluate_ctc(checkpoint: Path, manifest: Path, out: Path) -> dict:
    from .evaluate import ctc_report_markdown, evaluate_ctc, write_report

    report = evaluate_ctc(checkpoint, manifest, per_group=CTC_PER_GROUP)
    write_report(report, out, ctc_report_markdown(report))
    return report


def _cached(keys: StageKeys, result: Path, inputs: list, compute) -> dict:
    """The JSON in ``result`` when it was made from the same ``inputs`` (the keys of the model it
    evaluates and the evaluation's settings), else ``compute()``, which writes it."""
    name, key = result.name, stage_key("evaluate", result.name, inputs)
    if result.exists() and keys.current(name, key):
        keys.done(name, key, reused=True)
        return json.loads(result.read_text())
    report = compute()
    keys.done(name, key, reused=False)
    return report


def _examples(model_dir: Path, manifest: Path) -> list[dict]:
    """Translate and transcribe two test recordings with the exported model; print them."""
    from . import load
    from .data import read_manifest

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
