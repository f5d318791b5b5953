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
