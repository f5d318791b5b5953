"""The declared torch range (pyproject.toml) is what the installed torch satisfies and what the code
needs: FSDP2's public fully_shard and the MemTracker that `speechllama plan` traces with."""

import re

import torch
from conftest import ROOT
from packaging.specifiers import SpecifierSet
from packaging.version import Version


def test_installed_torch_is_within_the_declared_range_and_has_what_the_code_imports():
    declared = re.search(r'^\s*"torch([^"]*)"', (ROOT / "pyproject.toml").read_text(), re.M)
    spec = SpecifierSet(declared.group(1))
    installed = Version(torch.__version__.split("+")[0])
    assert installed in spec, f"torch {installed} is outside pyproject's {spec}"
    assert Version("2.5.99") not in spec  # fully_shard's public path needs >= 2.6
    from torch.distributed._tools.mem_tracker import MemTracker  # noqa: F401 (speechllama plan)
    from torch.distributed.fsdp import fully_shard  # noqa: F401 (train.parallel=fsdp)


# --- scripts/install.sh chooses the torch build on purpose (`--print-torch-choice` installs nothing) ---

import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"


@pytest.fixture
def choice(tmp_path):
    """Runs `bash scripts/install.sh --print-torch-choice` on a machine we make up: PATH holds only
    the tools the script needs plus, if asked, a fake nvidia-smi; pip sees no config file and an
    empty find-links folder unless the test adds to it. Returns (why-line, pip-line)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dirname", "grep", "sed", "uname", "timeout"):
        (tools / tool).symlink_to(shutil.which(tool))
    wheels = tmp_path / "wheels"
    wheels.mkdir()

    def run(nvidia_smi: str | None = None, nvidia_rc: int = 0, **env: str) -> tuple[str, str]:
        if nvidia_smi is not None:
            fake = tools / "nvidia-smi"
            fake.write_text(f"#!/bin/sh\necho '{nvidia_smi}'\nexit {nvidia_rc}\n")
            fake.chmod(0o755)
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("PIP_") and k not in ("SPEECHLLAMA_TORCH", "TORCH_INDEX_URL", "PYTHON")}
        base.update(PATH=str(tools), PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS=str(wheels))
        base.update(env)
        out = subprocess.run([shutil.which("bash"), str(ROOT / "scripts" / "install.sh"), "--print-torch-choice"],
                             env=base, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 2 and lines[0].startswith("torch: "), out.stdout
        return lines[0], lines[1]

    run.wheels = wheels
    return run


GPU_LINE = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0b6e3c51-2f0a-4c0e-9d4b-1a2b3c4d5e6f)"


def test_a_listed_gpu_gets_pypis_cuda_build_never_a_local_cpu_wheel(choice):
    why, pip = choice(nvidia_smi=GPU_LINE)
    assert pip == "pip install torch===2.13.0"
    assert "CUDA build" in why and "NVIDIA H100 80GB HBM3" in why and "UUID" not in why
    # a local +cpu wheel changes nothing: `===` rules out 2.13.0+cpu, which `==2.13.0` would take
    (choice.wheels / f"torch-2.13.0+cpu-{TAG}-{TAG}-manylinux_2_28_{platform.machine()}.whl").touch()
    assert choice(nvidia_smi=GPU_LINE)[1] == "pip install torch===2.13.0"


def test_no_gpu_and_no_local_wheel_gets_pytorchs_cpu_index(choice):
    why, pip = choice()  # no nvidia-smi on PATH at all
    assert pip == f"pip install --index-url {CPU_INDEX} torch==2.13.0+cpu"
    assert "CPU build" in why and CPU_INDEX in why and "no nvidia-smi" in why
    # an nvidia-smi that finds no device (its exit 6) is no GPU either
    why, pip = choice(nvidia_smi="No devices were found", nvidia_rc=6)
    assert pip == f"pip install --index-url {CPU_INDEX} torch==2.13.0+cpu" and "lists no GPU" in why


def test_a_local_cpu_wheel_for_this_python_is_used_one_for_another_python_is_not(choice):
    arch = platform.machine()
    (choice.wheels / f"torch-2.13.0+cpu-cp39-cp39-manylinux_2_28_{arch}.whl").touch()
    (choice.wheels / f"torch-2.12.0+cpu-{TAG}-{TAG}-manylinux_2_28_{arch}.whl").touch()
    assert choice()[1] == f"pip install --index-url {CPU_INDEX} torch==2.13.0+cpu"
    wheel = choice.wheels / f"torch-2.13.0+cpu-{TAG}-{TAG}-manylinux_2_28_{arch}.whl"
    wheel.touch()
    why, pip = choice()
    assert pip == "pip install torch==2.13.0+cpu" and str(wheel) in why


def test_a_local_file_index_with_the_cpu_wheel_counts_too(choice, tmp_path):
    page = tmp_path / "simple" / "torch" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<a href="../../files/torch-2.13.0%2Bcpu-{TAG}-{TAG}-manylinux_2_28_'
                    f'{platform.machine()}.whl#sha256=00">x</a>\n')
    why, pip = choice(PIP_EXTRA_INDEX_URL=f"file://{tmp_path / 'simple'}")
    assert pip == "pip install torch==2.13.0+cpu" and str(page) in why


def test_settings_override_the_detection(choice):
    why, pip = choice(nvidia_smi=GPU_LINE, SPEECHLLAMA_TORCH="cpu")
    assert pip == f"pip install --index-url {CPU_INDEX} torch==2.13.0+cpu"
    assert "CPU build" in why and "SPEECHLLAMA_TORCH=cpu" in why
    why, pip = choice(SPEECHLLAMA_TORCH="cuda")
    assert pip == "pip install torch===2.13.0" and "SPEECHLLAMA_TORCH=cuda" in why
    url = "https://download.pytorch.org/whl/cu128"
    why, pip = choice(nvidia_smi=GPU_LINE, TORCH_INDEX_URL=url)
    assert pip == f"pip install --index-url {url} torch==2.13.0" and f"TORCH_INDEX_URL={url}" in why


def test_an_unknown_setting_stops_the_install_before_it_does_anything():
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True,
                         env={**os.environ, "SPEECHLLAMA_TORCH": "gpu"}, timeout=30)
    assert out.returncode == 2 and "use auto, cpu or cuda" in out.stderr and out.stdout == ""
