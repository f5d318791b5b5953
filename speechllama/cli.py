"""The ``speechllama`` command: argparse subcommands, each calling one library function."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from .config import ConfigError, load_config
from .errors import UserError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    _any_order(p)  # `train ctc --data D train.max_steps=9 --out R` as well
    p.add_argument("--config", help="YAML experiment config (default: built-in defaults)")
    p.add_argument("--data", help="corpus folder holding train.jsonl and dev.jsonl "
                   "(sets data.train and data.dev)")
    p.add_argument("--out", required=True, help="run folder for checkpoints and logs")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (same config)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.max_steps=500")


def _resolve_config(args):
    from .checkpoint import latest_checkpoint

    overrides = list(args.overrides)
    if args.data:
        overrides += [f"data.train={Path(args.data) / 'train.jsonl'}",
                      f"data.dev={Path(args.data) / 'dev.jsonl'}"]
    last = latest_checkpoint(args.out) if args.resume else None
    if last is not None:
        print(f"resuming from {last} (its config.yaml; overrides apply on top)", file=sys.stderr)
        return load_config(last / "config.yaml", overrides), last
    cfg = load_config(args.config, overrides)
    if not cfg.data.train:
        raise ConfigError("no training data: pass --data DIR or data.train=MANIFEST")
    return cfg, None


def cmd_train(args) -> int:
    from .config import save_config
    from .device import resolve_device
    from .models.shipped import is_shipped
    from .train import distributed_env, fit

    if getattr(args, "compressor", None):
        args.overrides.append(f"speech_llm.compressor={args.compressor}")
    if getattr(args, "llm", None):  # stage 1: the labels' LLM; stage 2: the LLM
        key = "compressor.label_llm" if args.train_command == "ctc" else "llm.path"
        args.overrides.append(f"{key}={args.llm}")
    cfg, last = _resolve_config(args)
    from_scratch = cfg.llm.init == "scratch" or cfg.speech_llm.system == "encoder_decoder"
    if args.train_command != "ctc" and from_scratch and (not cfg.llm.path or is_shipped(cfg.llm.path)):
        # a model trained from scratch has no pretrained LLM: its own is created by the task
        # and kept with the run
        cfg.llm.path = str(Path(args.out) / "llm-init")
    resolve_device(cfg.train.device)  # a device that is not there fails before any work
    rank, world = distributed_env()
    if args.train_command == "ctc":
        from .tasks.ctc import CTCTask as Task
    else:
        from .tasks.speech_llm import SpeechLLMTask as Task
    task = Task(cfg, resume_from=last, rank=rank, world_size=world)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_config(cfg, Path(args.out) / "config.yaml")
        total = sum(p.numel() for p in task.model.parameters())
        trainable = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
        print(f"{args.train_command}: {trainable / 1e6:.2f}M trainable of {total / 1e6:.2f}M "
              f"parameters, {len(task.items)} training items", file=sys.stderr)
    final = fit(task, cfg, args.out, resume=args.resume)
    if rank == 0:
        print(f"checkpoint: {final}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import (
        ctc_report_markdown,
        evaluate_ctc,
        evaluate_model,
        model_report_markdown,
        write_report,
    )
    from .models.build import checkpoint_kind

    if args.what == "ctc" or checkpoint_kind(args.model) == "ctc":
        report = evaluate_ctc(args.model, args.data, per_group=args.per_group)
        md = ctc_report_markdown(report)
        if args.out:
            write_report(report, args.out, md)
    else:
        report = evaluate_model(args.model, args.data, _decoding_options(args), out=args.out,
                                per_group=args.per_group, ceiling=args.ceiling,
                                device=args.device)
        md = model_report_markdown(report)
    print(md)
    return 0


def _decoding_options(args):
    from .decode import DecodingOptions

    return DecodingOptions(beam_size=args.beam_size, max_new_tokens=args.max_new_tokens,
                           ctc_weight=args.ctc_weight, ctc_candidates=args.ctc_candidates)


def _add_decoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--ctc-weight", type=float, default=None,
                   help="weight of the CTC prefix score in joint CTC/LLM transcription, 0..1; "
                        "0 = the LLM alone; default: 0.5 where the model allows it "
                        "(LLM-token CTC labels and speech_llm.asr_target=normalized), else 0")
    p.add_argument("--ctc-candidates", type=int, default=10,
                   help="LLM next-token candidates per hypothesis scored with CTC (joint decoding)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else cpu) | cpu | cuda | cuda:N")


def cmd_infer(args) -> int:
    """translate / transcribe files of any length in ``--format``: text is one line per file
    (``name<TAB>text`` for several); other formats print each file's body, after a ``==> name <==``
    line when there are several. Unreadable files are reported, the rest decoded."""
    from .audio import AudioError, load_audio
    from .inference import Job, load
    from .subtitles import render

    model = load(args.model, _decoding_options(args), device=args.device)
    task = "st" if args.command == "translate" else "asr"
    tgt = args.tgt_lang if task == "st" else (args.src_lang or "")
    jobs, failed = [], 0
    for name in args.files:
        try:
            jobs.append(Job(load_audio(name), task, args.src_lang, tgt,
                            word_timestamps=args.format == "verbose_json", name=name))
        except AudioError as e:
            print(f"speechllama: error: {e}", file=sys.stderr)
            failed += 1
    several = len(args.files) > 1
    for job, transcript in zip(jobs, model.run(jobs)):
        body = render(transcript, args.format)
        if args.format == "text":
            print(f"{job.name}\t{body}" if several else body, flush=True)
        else:  # srt and vtt end with a blank line already
            print(f"==> {job.name} <==\n{body}" if several else body, flush=True,
                  end="" if body.endswith("\n") else "\n")
    return 1 if failed else 0


def cmd_export(args) -> int:
    """A self-contained model folder; its path on stdout (progress on stderr)."""
    from .export import export

    print(export(args.model, args.out, merge_lora=args.merge_lora, peft_adapter=args.peft_adapter))
    return 0


def cmd_data_check(args) -> int:
    from .data import check_manifest

    bad = 0
    for manifest in args.manifests:
        problems = check_manifest(manifest, decode=not args.no_decode)
        for p in problems:
            print(p)
        bad += len(problems)
        if not problems:
            print(f"{manifest}: OK")
    return 1 if bad else 0


def cmd_data_demo(args) -> int:
    from .data import build_demo
    from .data.demo import corpus_kwargs

    cfg = load_config(args.config, args.overrides).corpus
    kwargs = {**corpus_kwargs(cfg), "workers": args.workers}
    if args.root:
        kwargs["root"] = args.root
    _print_result(build_demo(args.out, **kwargs))
    return 0


def cmd_data_fillets(args) -> int:
    from .data import build_fillets_speech

    kwargs = {"langs": tuple(args.langs.split(","))}
    if args.root:
        kwargs["root"] = args.root
    _print_result(build_fillets_speech(args.out, **kwargs))
    return 0


def cmd_data_covost2(args) -> int:
    from .data import import_covost2

    _print_result(import_covost2(args.tsv, args.clips, args.out, src_lang=args.src_lang,
                                 tgt_lang=args.tgt_lang, split=args.split))
    return 0


def cmd_data_librispeech(args) -> int:
    from .data import import_librispeech

    _print_result(import_librispeech(args.root, args.out, lang=args.lang))
    return 0


def cmd_demo(args) -> int:
    from .pipeline import run_demo

    report = run_demo(args.out, procs=args.procs, control=args.control, overrides=args.overrides,
                      preset=args.preset)
    print(f"report: {report}")
    return 0


def cmd_experiment_paper(args) -> int:
    from .experiment import run_paper

    table = run_paper(Path(args.data), Path(args.out), args.name,
                      [Path(d) for d in args.extra_train], args.per_group, not args.no_whisper,
                      args.overrides, Path(args.compressor) if args.compressor else None,
                      args.minutes, args.steps, "speechllama " + shlex.join(args.argv), args.ear)
    print(f"table: {table}")
    return 0


def cmd_serve(args) -> int:
    """OpenAI's speech-to-text API over one model until interrupted (docs/serving.md)."""
    from .serve import serve

    serve(args.model, args.host, args.port, _decoding_options(args), args.device, args.api_key,
          args.max_batch, args.max_wait_ms, args.max_upload_mb, args.dtype, args.max_audio_s,
          args.max_queue, args.read_timeout_s, args.timeout_keep_alive)
    return 0


def cmd_plan(args) -> int:
    """Parameters, memory per GPU and FLOP per step of a config, without reading weights."""
    from .plan import format_plan, make_plan

    cfg = load_config(args.config, args.overrides)
    print(format_plan(make_plan(cfg, args.config, args.gpus, args.gpu_memory, args.parallel,
                                args.seconds, args.compression_ratio)))
    return 0


def _print_result(result) -> None:
    if result is not None:
        print(json.dumps(result, indent=1, ensure_ascii=False, default=str))


class _AnyOrderParser(argparse.ArgumentParser):
    """A subcommand whose options and section.key=value overrides may come in any order (plain
    argparse takes no positional after an option once the first positionals are matched)."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_inner", False):  # the intermixed parse calls back in, twice
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def _any_order(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let a leaf subcommand take its options and overrides in any order."""
    p.__class__ = _AnyOrderParser
    return p


def build_parser() -> argparse.ArgumentParser:
    from .models.shipped import DEFAULT_LLM, SHIPPED
    from .pipeline import PRESETS

    parser = argparse.ArgumentParser(prog="speechllama", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build, import and check corpora").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("demo", help="the demo corpus: Fillets lines + num2words numbers in espeak-ng, "
                        "Kokoro-82M and human voices, with the held-out sets")
    _any_order(p)
    p.add_argument("out")
    p.add_argument("--config", help="YAML config whose corpus section is used (default: built-in)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", help="Fillets data folder (default: the Debian package's)")
    p.add_argument("overrides", nargs="*", metavar="corpus.key=value",
                   help="corpus settings, e.g. corpus.kokoro_per_lang=100 corpus.langs=[de,fr]")
    p.set_defaults(func=cmd_data_demo)
    p = data.add_parser("fillets-speech", help="real Czech/Dutch voice acting from Fillets")
    p.add_argument("out")
    p.add_argument("--langs", default="cs,nl")
    p.add_argument("--root", help="Fillets data folder (default: the Debian package's)")
    p.set_defaults(func=cmd_data_fillets)
    p = data.add_parser("covost2", help="import a CoVoST-2 TSV + Common Voice clips to JSONL")
    p.add_argument("tsv")
    p.add_argument("clips")
    p.add_argument("out")
    p.add_argument("--src-lang")
    p.add_argument("--tgt-lang")
    p.add_argument("--split", help="keep rows of this split (train/dev/test) if the TSV has one")
    p.set_defaults(func=cmd_data_covost2)
    p = data.add_parser("librispeech", help="import a LibriSpeech-style folder to JSONL")
    p.add_argument("root")
    p.add_argument("out")
    p.add_argument("--lang", default="en")
    p.set_defaults(func=cmd_data_librispeech)
    p = data.add_parser("check", help="validate manifests (fields, types, audio decodes)")
    p.add_argument("manifests", nargs="+")
    p.add_argument("--no-decode", action="store_true", help="skip decoding the audio files")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("demo", help="the default demo end to end (corpus, training, report)")
    _any_order(p)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--procs", type=int, default=2,
                   help="stage-1 training processes (torchrun ranks); stage 2 runs as one process")
    p.add_argument("--preset", choices=list(PRESETS), default="demo",
                   help="; ".join(f"{k}: {v.about}" for k, v in PRESETS.items())
                        + " (docs/design.md; the settings are in speechllama/pipeline.py)")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the zero-audio control (same training, audio replaced by zeros), "
                        "which the demo trains by default to test that the model listens")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides: corpus.* for the corpus, the rest for both training "
                        "stages, e.g. corpus.kokoro_per_lang=100 train.max_steps=100")
    p.set_defaults(func=cmd_demo)

    ex = sub.add_parser("experiment", help="reproduce the paper's comparisons").add_subparsers(
        dest="experiment_command", required=True)
    p = ex.add_parser("paper", help="all systems and ablations, one table (resumable)")
    _any_order(p)
    p.add_argument("--data", required=True, help="corpus folder (train/dev/test.jsonl); test on it")
    p.add_argument("--extra-train", nargs="*", default=[], metavar="DIR",
                   help="more corpora whose train.jsonl joins the training data")
    p.add_argument("--out", default="results")
    p.add_argument("--name", default="paper-table", help="OUT/NAME.md, .json, .png")
    p.add_argument("--per-group", type=int, default=20,
                   help="test rows per task, language pair and subset")
    p.add_argument("--no-whisper", action="store_true", help="skip the Whisper-base reference")
    p.add_argument("--compressor", metavar="CKPT",
                   help="reuse this trained stage-1 compressor instead of training one")
    p.add_argument("--ear", choices=("scratch", "whisper-base"), default="scratch",
                   help="every system's acoustic front end: the paper's compressor trained from "
                        "scratch (the pretrained ear as one more row), or the demo's pretrained "
                        "Whisper-base ear (with --compressor: the demo's runs/demo/ctc)")
    p.add_argument("--minutes", type=float, metavar="M",
                   help="stage-2 wall-time cap per system (default: the demo's 8.5)")
    p.add_argument("--steps", type=int, metavar="N",
                   help="stage-2 steps per system, no time cap (same data for every system, "
                        "reproducible on a loaded machine)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides for every run, e.g. train.max_minutes=4")
    p.set_defaults(func=cmd_experiment_paper)

    train = sub.add_parser("train", help="train a stage").add_subparsers(
        dest="train_command", required=True)
    p = train.add_parser("ctc", help="stage 1: the CTC compressor")
    _add_config_args(p)
    p.add_argument("--llm", help="with compressor.labels=llm_tokens: the LLM whose tokens are the "
                                 "CTC labels (compressor.label_llm; a shipped name or a folder; "
                                 "default: smollm2)")
    p.set_defaults(func=cmd_train)
    p = train.add_parser("speech-llm", help="stage 2: audio encoder + LoRA on a frozen LLM")
    _add_config_args(p)
    p.add_argument("--compressor", help="stage-1 checkpoint or run folder")
    p.add_argument("--llm", help="the frozen LLM (llm.path): a shipped name "
                                 f"({', '.join(SHIPPED)}) or a local Hugging Face folder of a "
                                 f"supported family (default: {DEFAULT_LLM})")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="parameters, memory per GPU and FLOP per step of a stage-2 "
                       "config, and whether it fits, before the run (no weights read; docs/scale.md)")
    _any_order(p)  # `plan CONFIG --gpus 8 train.bf16=true` as well
    p.add_argument("config", help="YAML experiment config")
    p.add_argument("--gpus", type=int, default=1, help="GPUs in all (torchrun's world size)")
    p.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB",
                   help="memory of each GPU in GiB (default 80)")
    p.add_argument("--parallel", choices=["ddp", "fsdp"], help="default: train.parallel")
    p.add_argument("--seconds", type=float, help="length of every row (default: data.max_seconds)")
    p.add_argument("--compression-ratio", type=float, metavar="R",
                   help="subsampled frames per audio vector (default: measured on the demo "
                        "corpus for the config's CTC labels and compression)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.activation_checkpointing=true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("evaluate", help="evaluate a model on a manifest (BLEU/chrF, WER/CER)")
    p.add_argument("what", nargs="?", choices=["ctc"],
                   help="'ctc': only the CTC compressor (CER/WER, compression ratios)")
    p.add_argument("--model", required=True, help="checkpoint, run or model folder")
    p.add_argument("--data", required=True, help="manifest (JSONL)")
    p.add_argument("--out", help="write OUT.md, OUT.json (and OUT.hyp.jsonl)")
    p.add_argument("--per-group", type=int, help="score only the first N rows of each task, "
                   "language pair and subset (numbers/sentences)")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip the text-MT ceiling (the frozen LLM translating the reference "
                        "transcripts of the same ST rows)")
    _add_decoding_args(p)
    p.set_defaults(func=cmd_evaluate)

    for name, helptext in (("translate", "speech -> English text, one line per file"),
                           ("transcribe", "speech -> text in its own language, one line per file")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("files", nargs="+", help="audio files (any format and rate soundfile reads)")
        p.add_argument("--model", required=True)
        p.add_argument("--src-lang", help="source language code (default: not named in the prompt)")
        if name == "translate":
            p.add_argument("--tgt-lang", default="en")
        from .subtitles import FORMATS

        p.add_argument("--format", default="text", choices=FORMATS,
                       help="text (default: the text, one line per file) | json | verbose_json "
                            "(timed segments, and words for transcripts) | srt | vtt (subtitles); "
                            "files of any length are cut into segments at pauses")
        _add_decoding_args(p)
        p.set_defaults(func=cmd_infer)

    p = sub.add_parser("export", help="a self-contained model folder (the LLM included) that "
                       "load() and serve use without the training run or the LLM cache")
    p.add_argument("--model", required=True, help="stage-2 checkpoint, run or model folder")
    p.add_argument("--out", required=True, help="the new folder (must not exist, or be empty)")
    p.add_argument("--merge-lora", action="store_true",
                   help="merge the LoRA into the LLM's weights (peft merge_and_unload)")
    p.add_argument("--peft-adapter", action="store_true",
                   help="also write OUT/adapter: the LoRA as a peft adapter on the unmerged "
                        "OUT/llm (not with --merge-lora)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve a model over HTTP: OpenAI's /v1/audio/transcriptions and "
                       "/v1/audio/translations, batched, and a web page at /")
    p.add_argument("--model", required=True, help="checkpoint, run or model folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: no key)")
    p.add_argument("--max-batch", type=int, default=16,
                   help="most jobs decoded together (a file, or a segment of a long file)")
    p.add_argument("--max-wait-ms", type=float, default=20.0,
                   help="how long the first request of a batch waits for others to join it")
    p.add_argument("--max-upload-mb", type=float, default=25.0,
                   help="largest request body; bigger ones get 413 (default 25, as OpenAI's API)")
    p.add_argument("--max-audio-s", type=float, default=1800.0,
                   help="longest audio a request may hold, from the file's header before decoding; "
                        "longer gets 413 (default 1800)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="most requests in the server at once; more get 503 with Retry-After (default 64)")
    p.add_argument("--read-timeout-s", type=float, default=120.0,
                   help="longest a request body may take to arrive; slower gets 408 (default 120)")
    p.add_argument("--timeout-keep-alive", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open (uvicorn's; default 5)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="the frozen LLM's weights: float32 (default: a result never depends on "
                        "the batch it was decoded in) or bfloat16 (half the bytes; a near-tie token "
                        "can flip with the batch's shape)")
    _add_decoding_args(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops like Ctrl-C, children included
    try:
        return args.func(args)
    except (UserError, OSError) as e:
        if not _users_error(e) or os.environ.get("SPEECHLLAMA_DEBUG"):
            raise  # a bug keeps its traceback
        print(f"speechllama: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechllama: interrupted (the last checkpoint is intact; use --resume)",
              file=sys.stderr)
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _users_error(e: BaseException) -> bool:
    """One line for the user's mistakes (errors.py): a UserError, or an OS error about a named file
    (missing, unreadable, a full disk). Everything else is a bug and keeps its traceback."""
    return isinstance(e, UserError) or (isinstance(e, OSError) and e.filename is not None)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
