"""The real command, end to end, at toy scale: corpus -> stage 1 -> stage 2 on the default LLM
(Gemma-3-270M) -> report."""

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
    cmd = [sys.executable, "-m", "speechllama", "demo", "--out", str(out), "--procs", "1",
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
        "import sys\nimport speechllama.cli as cli\nfrom speechllama.pipeline import run_child\n"
        f"cli.cmd_train = lambda args: run_child([sys.executable, {str(child_script)!r}])\n"
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
    import json

    from conftest import CORPUS_WORDS, tiny_llm_folder

    from speechllama.pipeline import run_demo

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
