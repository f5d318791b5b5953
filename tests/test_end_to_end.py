"""The real command, end to end, at toy scale: corpus -> stage 1 -> stage 2 on SmolLM2 -> report."""

import os
import shutil
import subprocess
import sys

import pytest

from speechllama.models.llm import default_llm_path


@pytest.mark.slow
def test_demo_command_runs_end_to_end(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install.sh installs it)")
    default_llm_path()  # converts SmolLM2 once (~20 s) so the timing below is the pipeline's
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "speechllama", "demo", "--out", str(out), "--langs", "de",
           "--sentences", "30", "--numbers", "6", "--procs", "1",
           "train.max_steps=3", "train.log_every=1", "data.max_frames=1200"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = (out / "report.md").read_text()
    for heading in ("## Speech-LLaMA on the test split", "## Stage 1: CTC compressor",
                    "## Two test files", "## Wall time per stage"):
        assert heading in report
    assert (out / "model" / "model.safetensors").exists()
    assert "translate :" in proc.stderr and "transcribe:" in proc.stderr
