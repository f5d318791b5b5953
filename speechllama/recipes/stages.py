"""The stage runner the recipes share: each training or evaluation stage keyed by what determines
it (its resolved settings, its inputs' keys, FORMAT_VERSION), reused when its key matches, resumed
when interrupted, run as its own process (torchrun for several ranks), timed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..checkpoint import latest_checkpoint, read_json
from ..errors import UserError

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


def cached(keys: StageKeys, result: Path, inputs: list, compute) -> dict:
    """The JSON in ``result`` when it was made from the same ``inputs`` (the keys of the model it
    evaluates and the evaluation's settings), else ``compute()``, which writes it."""
    name, key = result.name, stage_key("evaluate", result.name, inputs)
    if result.exists() and keys.current(name, key):
        keys.done(name, key, reused=True)
        return json.loads(result.read_text())
    report = compute()
    keys.done(name, key, reused=False)
    return report
