"""The subcommands' bodies: each reads its arguments and calls one library function."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..config import ConfigError, load_config


def _resolve_config(args):
    from ..checkpoint import latest_checkpoint

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
    from ..config import save_config
    from ..device import distributed_env, resolve_device
    from ..models.shipped import is_shipped
    from ..training.loop import fit

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
        from ..training.ctc import CTCTask as Task
    else:
        from ..training.speech_llm import SpeechLLMTask as Task
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
    from ..evaluation.evaluate import (
        ctc_report_markdown,
        evaluate_ctc,
        evaluate_model,
        model_report_markdown,
        write_report,
    )
    from ..models.build import checkpoint_kind

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
    from ..models.decode import DecodingOptions

    return DecodingOptions(beam_size=args.beam_size, max_new_tokens=args.max_new_tokens,
                           ctc_weight=args.ctc_weight, ctc_candidates=args.ctc_candidates)


def cmd_infer(args) -> int:
    """translate / transcribe files of any length in ``--format``: text is one line per file
    (``name<TAB>text`` for several); other formats print each file's body, after a ``==> name <==``
    line when there are several. Unreadable files are reported, the rest decoded."""
    from ..audio import AudioError, load_audio
    from ..inference.api import Job, load
    from ..inference.subtitles import render

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
    from ..inference.export import export

    print(export(args.model, args.out, merge_lora=args.merge_lora, peft_adapter=args.peft_adapter))
    return 0


def cmd_data_check(args) -> int:
    from ..data import check_manifest

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
    from ..data import build_demo
    from ..data.demo import corpus_kwargs

    cfg = load_config(args.config, args.overrides).corpus
    kwargs = {**corpus_kwargs(cfg), "workers": args.workers}
    if args.root:
        kwargs["root"] = args.root
    _print_result(build_demo(args.out, **kwargs))
    return 0


def cmd_data_fillets(args) -> int:
    from ..data import build_fillets_speech

    kwargs = {"langs": tuple(args.langs.split(","))}
    if args.root:
        kwargs["root"] = args.root
    _print_result(build_fillets_speech(args.out, **kwargs))
    return 0


def cmd_data_covost2(args) -> int:
    from ..data import import_covost2

    _print_result(import_covost2(args.tsv, args.clips, args.out, src_lang=args.src_lang,
                                 tgt_lang=args.tgt_lang, split=args.split))
    return 0


def cmd_data_librispeech(args) -> int:
    from ..data import import_librispeech

    _print_result(import_librispeech(args.root, args.out, lang=args.lang))
    return 0


def cmd_demo(args) -> int:
    from ..recipes.demo import run_demo

    report = run_demo(args.out, procs=args.procs, control=args.control, overrides=args.overrides,
                      preset=args.preset)
    print(f"report: {report}")
    return 0


def cmd_experiment_paper(args) -> int:
    from ..recipes.paper import run_paper

    table = run_paper(Path(args.data), Path(args.out), args.name,
                      [Path(d) for d in args.extra_train], args.per_group, not args.no_whisper,
                      args.overrides, Path(args.compressor) if args.compressor else None,
                      args.minutes, args.steps, "speechllama " + shlex.join(args.argv), args.ear)
    print(f"table: {table}")
    return 0


def cmd_serve(args) -> int:
    """OpenAI's speech-to-text API over one model until interrupted (docs/serving.md)."""
    from ..serve import serve

    serve(args.model, args.host, args.port, _decoding_options(args), args.device, args.api_key,
          args.max_batch, args.max_wait_ms, args.max_upload_mb, args.dtype, args.max_audio_s,
          args.max_queue, args.read_timeout_s, args.timeout_keep_alive)
    return 0


def cmd_plan(args) -> int:
    """Parameters, memory per GPU and FLOP per step of a config, without reading weights."""
    from ..training.plan import format_plan, make_plan

    cfg = load_config(args.config, args.overrides)
    print(format_plan(make_plan(cfg, args.config, args.gpus, args.gpu_memory, args.parallel,
                                args.seconds, args.compression_ratio)))
    return 0


def _print_result(result) -> None:
    if result is not None:
        print(json.dumps(result, indent=1, ensure_ascii=False, default=str))
