"""The real command, end to end, at toy scale: corpus -> stage 1 -> stage 2 on the default LLM
(Gemma-3-270M) -> report."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from speechllama.models.shipped import shipped_llm_path


@pytest.mark.slow
def test_demo_command_runs_end_to_end(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install.sh installs it)")
    shipped_llm_path()  # converts the default LLM once (~1 min) so the timing below is the pipeline's
    out = tmp_path / "demo"
    # the longer recipe's code path (its settings scaled down by the overrides, which win): Kokoro
    # voices in training, Whisper-base on the same rows, the goals; the demo's path is its subset
    cmd = [sys.executable, "-m", "speechllama", "demo", "--preset", "quality", "--out", str(out),
           "--procs", "1", "corpus.kokoro_per_lang=2",
           "corpus.langs=[de]", "corpus.sentences_per_lang=30", "corpus.numbers_per_lang=6",
           "corpus.kokoro_heldout_per_lang=2", "corpus.real_speech=[cs]",
           "train.max_steps=3", "train.log_every=1", "data.max_frames=1200", "data.max_seconds=8",
           "data.max_hours=0.05"]  # the ear's features: a 3-minute sample of the training audio
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = (out / "report.md").read_text()
    for heading in ("## Speech-LLaMA on the test split", "## Stage 1: CTC compressor",
                    "## Held-out sets", "## Two test files", "## Wall time per stage"):
        assert heading in report
    for line in ("| heldout-kokoro | kokoro | ", "| heldout-real | real | ", "| train | real | ",
                 "| unseen voice source: Kokoro", "| real speech: human"):
        assert line in report, line
    assert (out / "model" / "model.safetensors").exists()
    assert "translate :" in proc.stderr and "transcribe:" in proc.stderr
    # the pretrained ear by default, and the cascade next to the text-MT ceiling
    assert "Ear (`compressor.backbone=whisper-base`)" in report
    assert "cascade (frozen LLM, its compressor's greedy transcripts)" in report
    # the preset: its reproduction, Kokoro in training, Whisper-base on the same rows, the goals
    assert f"Reproduce: `speechllama demo --preset quality --out {out}`" in report
    assert "| train | kokoro | " in report
    assert "Whisper-base (same rows)" in report and report.count("| Whisper-base, same rows |") == 3
    assert "## Goals of the longer recipe" in report
    assert "ST BLEU above Whisper-base's, unseen voice source" in report
    why = report.split("## Why, measured in this run")[1].split("\n## ")[0]  # from this run's numbers
    assert "(the text-MT ceiling)" in why and "unseen voice source CER" in why and "Whisper-base" in why
    whisper = [json.loads(line) for line in (out / "whisper-base-test.hyp.jsonl").read_text().splitlines()]
    ours = [json.loads(line) for line in (out / "speech-llm-test.hyp.jsonl").read_text().splitlines()]
    assert [r["id"] for r in whisper] == [r["id"] for r in ours] and any(r["hyp"] for r in whisper)


def test_sigterm_stops_the_training_child_too(tmp_path):
    """SIGTERM to a pipeline command (demo, experiment) reaches the stage it is running."""
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    child_script = tmp_path / "child.py"
    child_script.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                            "time.sleep(120)\n")
    parent_script = tmp_path / "parent.py"  # `speechllama train` whose stage is the child above
    parent_script.write_text(
        "import sys\nimport speechllama.cli as cli\nfrom speechllama.recipes.stages import run_child\n"
        f"cli.commands.cmd_train = lambda args: run_child([sys.executable, {str(child_script)!r}])\n"
        "sys.exit(cli.main(['train', 'ctc', '--data', 'x', '--out', 'y']))\n")
    parent = subprocess.Popen([sys.executable, str(parent_script)], stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # until the child runs (bounded: 60 s)
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 130 and "interrupted" in err
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left running
        os.kill(child, 0)


@pytest.mark.slow
def test_demo_rerun_with_changed_settings_retrains_what_depends_on_them(tmp_path):
    """Stages are keyed by their settings and inputs: rerunning the demo with another train.* value
    retrains both stages and re-scores them, and its results equal a clean run's; rerunning with
    the same settings reuses every stage."""
    from conftest import CORPUS_WORDS, tiny_llm_folder

    from speechllama.recipes.demo import run_demo

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install.sh installs it)")
    llm = tiny_llm_folder(tmp_path / "llm", CORPUS_WORDS)
    tiny = ["corpus.langs=[de]", "corpus.sentences_per_lang=30", "corpus.numbers_per_lang=6",
            "corpus.kokoro_heldout_per_lang=0", "corpus.real_speech=[]", f"llm.path={llm}",
            "data.max_frames=1200", "data.max_seconds=8", "compressor.d_model=32",
            "compressor.ff_dim=64", "speech_llm.encoder_dim=32", "speech_llm.encoder_ff=64",
            "speech_llm.encoder_layers=1", "train.log_every=1"]

    def results(out):
        return [json.loads((out / name).read_text())["macro" if "llm" in name else "macro_cer"]
                for name in ("ctc-test.json", "speech-llm-test.json")]

    clean = tmp_path / "clean"
    run_demo(clean, procs=1, control=False, overrides=tiny + ["train.max_steps=3"])
    rerun = tmp_path / "rerun"
    shutil.copytree(clean / "data", rerun / "data")  # the same corpus: its stage is keyed too
    run_demo(rerun, procs=1, control=False, overrides=tiny + ["train.max_steps=2"])
    run_demo(rerun, procs=1, control=False, overrides=tiny + ["train.max_steps=3"])
    assert results(rerun) == results(clean)
    assert "Reused from an earlier run with the same settings and inputs (stage keys in " \
        "`stage-keys.json`): nothing." in (rerun / "report.md").read_text()
    run_demo(rerun, procs=1, control=False, overrides=tiny + ["train.max_steps=3"])
    report = (rerun / "report.md").read_text()
    assert "stage 1: CTC compressor, " in report and "stage 2: speech-llm, " in report
    # a changed corpus.* setting rebuilds the corpus and retrains and re-scores everything on it
    before = json.loads((rerun / "data" / "stats.json").read_text())
    run_demo(rerun, procs=1, control=False, overrides=tiny + ["train.max_steps=3", "corpus.numbers_per_lang=4"])
    after = json.loads((rerun / "data" / "stats.json").read_text())
    assert after["config"] != before["config"] and after["splits"] != before["splits"]
    assert "`stage-keys.json`): nothing." in (rerun / "report.md").read_text()


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, monkeypatch, capsys):
    """The CLI prints a user's mistake (a missing file, a bad setting) as one line and exits 2; an
    internal error (a ValueError no user input explains) is not dressed up as one: it propagates
    with its traceback."""
    import speechllama.cli as cli
    from speechllama.errors import UsageError

    # a user error raised deep inside a command: one line, exit 2
    def user_mistake(args):
        raise UsageError("train.max_steps=-1: must be >= 0")

    monkeypatch.setattr(cli.commands, "cmd_train", user_mistake)
    assert cli.main(["train", "ctc", "--data", "x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == "speechllama: error: train.max_steps=-1: must be >= 0\n"

    # an OS error about a named file is the user's too
    def missing(args):
        open(tmp_path / "nope.jsonl")

    monkeypatch.setattr(cli.commands, "cmd_train", missing)
    assert cli.main(["train", "ctc", "--data", "x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("speechllama: error: ") and "nope.jsonl" in err and err.count("\n") == 1

    # a bug: the plain ValueError escapes with its traceback
    def bug(args):
        raise ValueError("shapes (3,) and (4,) do not match")

    monkeypatch.setattr(cli.commands, "cmd_train", bug)
    with pytest.raises(ValueError, match="shapes"):
        cli.main(["train", "ctc", "--data", "x", "--out", str(tmp_path / "o")])


def test_a_real_user_error_from_the_cli_is_one_line(tmp_path):
    """End to end through the installed entry point: a config key that does not exist."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    proc = subprocess.run([sys.executable, "-m", "speechllama", "train", "ctc", "--data", str(manifest),
                           "--out", str(tmp_path / "o"), "train.no_such_key=1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("speechllama: error: ") and "no_such_key" in proc.stderr
    assert "Traceback" not in proc.stderr
