"""The ``speechllama`` command line: every subcommand, its options and its handler (``commands``)."""

from __future__ import annotations

import argparse

from . import commands


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
    from ..models.shipped import DEFAULT_LLM, SHIPPED
    from ..recipes.budgets import PRESETS

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
    p.set_defaults(func=commands.cmd_data_demo)
    p = data.add_parser("fillets-speech", help="real Czech/Dutch voice acting from Fillets")
    p.add_argument("out")
    p.add_argument("--langs", default="cs,nl")
    p.add_argument("--root", help="Fillets data folder (default: the Debian package's)")
    p.set_defaults(func=commands.cmd_data_fillets)
    p = data.add_parser("covost2", help="import a CoVoST-2 TSV + Common Voice clips to JSONL")
    p.add_argument("tsv")
    p.add_argument("clips")
    p.add_argument("out")
    p.add_argument("--src-lang")
    p.add_argument("--tgt-lang")
    p.add_argument("--split", help="keep rows of this split (train/dev/test) if the TSV has one")
    p.set_defaults(func=commands.cmd_data_covost2)
    p = data.add_parser("librispeech", help="import a LibriSpeech-style folder to JSONL")
    p.add_argument("root")
    p.add_argument("out")
    p.add_argument("--lang", default="en")
    p.set_defaults(func=commands.cmd_data_librispeech)
    p = data.add_parser("check", help="validate manifests (fields, types, audio decodes)")
    p.add_argument("manifests", nargs="+")
    p.add_argument("--no-decode", action="store_true", help="skip decoding the audio files")
    p.set_defaults(func=commands.cmd_data_check)

    p = sub.add_parser("demo", help="the default demo end to end (corpus, training, report)")
    _any_order(p)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--procs", type=int, default=2,
                   help="stage-1 training processes (torchrun ranks); stage 2 runs as one process")
    p.add_argument("--preset", choices=list(PRESETS), default="demo",
                   help="; ".join(f"{k}: {v.about}" for k, v in PRESETS.items())
                        + " (docs/design.md; the settings are in speechllama/recipes/demo.py)")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the zero-audio control (same training, audio replaced by zeros), "
                        "which the demo trains by default to test that the model listens")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides: corpus.* for the corpus, the rest for both training "
                        "stages, e.g. corpus.kokoro_per_lang=100 train.max_steps=100")
    p.set_defaults(func=commands.cmd_demo)

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
    p.set_defaults(func=commands.cmd_experiment_paper)

    train = sub.add_parser("train", help="train a stage").add_subparsers(
        dest="train_command", required=True)
    p = train.add_parser("ctc", help="stage 1: the CTC compressor")
    _add_config_args(p)
    p.add_argument("--llm", help="with compressor.labels=llm_tokens: the LLM whose tokens are the "
                                 "CTC labels (compressor.label_llm; a shipped name or a folder; "
                                 "default: smollm2)")
    p.set_defaults(func=commands.cmd_train)
    p = train.add_parser("speech-llm", help="stage 2: audio encoder + LoRA on a frozen LLM")
    _add_config_args(p)
    p.add_argument("--compressor", help="stage-1 checkpoint or run folder")
    p.add_argument("--llm", help="the frozen LLM (llm.path): a shipped name "
                                 f"({', '.join(SHIPPED)}) or a local Hugging Face folder of a "
                                 f"supported family (default: {DEFAULT_LLM})")
    p.set_defaults(func=commands.cmd_train)

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
    p.set_defaults(func=commands.cmd_plan)

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
    p.set_defaults(func=commands.cmd_evaluate)

    for name, helptext in (("translate", "speech -> English text, one line per file"),
                           ("transcribe", "speech -> text in its own language, one line per file")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("files", nargs="+", help="audio files (any format and rate soundfile reads)")
        p.add_argument("--model", required=True)
        p.add_argument("--src-lang", help="source language code (default: not named in the prompt)")
        if name == "translate":
            p.add_argument("--tgt-lang", default="en")
        from ..inference.subtitles import FORMATS

        p.add_argument("--format", default="text", choices=FORMATS,
                       help="text (default: the text, one line per file) | json | verbose_json "
                            "(timed segments, and words for transcripts) | srt | vtt (subtitles); "
                            "files of any length are cut into segments at pauses")
        _add_decoding_args(p)
        p.set_defaults(func=commands.cmd_infer)

    p = sub.add_parser("export", help="a self-contained model folder (the LLM included) that "
                       "load() and serve use without the training run or the LLM cache")
    p.add_argument("--model", required=True, help="stage-2 checkpoint, run or model folder")
    p.add_argument("--out", required=True, help="the new folder (must not exist, or be empty)")
    p.add_argument("--merge-lora", action="store_true",
                   help="merge the LoRA into the LLM's weights (peft merge_and_unload)")
    p.add_argument("--peft-adapter", action="store_true",
                   help="also write OUT/adapter: the LoRA as a peft adapter on the unmerged "
                        "OUT/llm (not with --merge-lora)")
    p.set_defaults(func=commands.cmd_export)

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
    p.set_defaults(func=commands.cmd_serve)
    return parser
