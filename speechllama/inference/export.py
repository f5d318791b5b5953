"""Model folders out of training checkpoints, in two shapes.

:func:`export_model` is the cheap folder the demo and ``experiment paper`` evaluate: the
checkpoint's weights, config and CTC labels; the pretrained LLM stays where ``llm.path`` points
(a shipped LLM's converted copy in the user's cache, or a local folder).

:func:`export` (``speechllama export``) writes a self-contained folder that loads with nothing
else present, the user's cache included::

    OUT/
      model.safetensors   compressor, CMVN, audio encoder (+ the LoRA weights unless merged)
      config.yaml         llm.path: llm (relative to OUT), the weights_hash of OUT/llm
      tokenizer.model     the CTC labels (or ctc_vocab.json: LLM tokens)
      llm/                the LLM, save_pretrained: config.json, model.safetensors, tokenizer
      label_llm/          LLM-token CTC labels of another LLM than OUT/llm: that LLM's tokenizer
      adapter/            --peft-adapter: the LoRA for peft.PeftModel.from_pretrained(OUT/llm)

With ``merge_lora`` the LoRA is merged into OUT/llm's weights (peft ``merge_and_unload``) and the
config says ``llm.lora_rank: 0``. The LLM is saved in the dtype its base folder stores (float32 for
the shipped LLMs), merged in float32 first, so ``load(OUT, dtype=d)`` casts to ``d`` exactly as
``load(CKPT, dtype=d)`` does (docs/design.md, "Export").
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from ..checkpoint import load_tensors, resolve_checkpoint, save_tensors
from ..config import ExperimentConfig, load_config, save_config
from ..errors import UsageError
from ..text import LLM_TOKENS_FILE, SENTENCEPIECE_FILE

CTC_LABEL_FILES = (SENTENCEPIECE_FILE, LLM_TOKENS_FILE)  # a checkpoint holds one of the two
ADAPTER_DIR = "adapter"  # OUT/adapter: the peft adapter folder
SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def export_model(checkpoint: Path, out: Path) -> Path:
    """Copy what inference needs (weights, config, CTC tokenizer) out of a training checkpoint;
    nothing to do when ``out`` already holds this checkpoint. A pretrained LLM is referenced, not
    copied (see :func:`export` for a folder that carries it)."""
    source = out / "source.txt"
    if source.exists() and source.read_text() == str(checkpoint.resolve()):
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("model.safetensors", "config.yaml", *CTC_LABEL_FILES):
        if (checkpoint / name).exists():
            shutil.copy2(checkpoint / name, tmp / name)
    cfg = load_config(tmp / "config.yaml")
    if _own_llm(cfg):  # the model carries its own LLM or tokenizer folder
        shutil.copytree(cfg.llm.path, tmp / "llm")
        cfg.llm.path = "llm"  # relative to the model folder
        save_config(cfg, tmp / "config.yaml")
    (tmp / "source.txt").write_text(str(checkpoint.resolve()))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def export(model: str | os.PathLike, out: str | os.PathLike, merge_lora: bool = False,
           peft_adapter: bool = False) -> Path:
    """Write the self-contained folder ``out`` (new or empty) from a stage-2 checkpoint, run or
    model folder; returns ``out``. ``merge_lora``: the LoRA merged into OUT/llm's weights;
    ``peft_adapter``: also OUT/adapter, the LoRA as a peft adapter on the unmerged OUT/llm (the two
    exclude each other: the adapter needs the unmerged base)."""
    from ..models.build import load_speech_llm, resolve_llm_path

    out = Path(out)
    if merge_lora and peft_adapter:
        raise UsageError("--merge-lora and --peft-adapter exclude each other: the adapter applies "
                         "to the unmerged LLM in OUT/llm (export twice, into two folders, for both)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: already exists and is not an empty folder (choose a new --out)")
    folder = resolve_checkpoint(model)
    cfg = load_config(folder / "config.yaml")
    has_lora = not _own_llm(cfg) and cfg.llm.lora_rank > 0
    if (merge_lora or peft_adapter) and not has_lora:
        raise UsageError(f"{folder}: the model has no LoRA to "
                         f"{'merge' if merge_lora else 'write as a peft adapter'} "
                         "(llm.lora_rank=0, or an LLM trained from scratch)")
    print(f"export: loading {folder}", file=sys.stderr, flush=True)
    bundle = load_speech_llm(folder, frozen_dtype=torch.float32)  # checks the base LLM's hash
    cfg, llm_source = bundle.config, resolve_llm_path(bundle.config, folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        tensors = load_tensors(folder / "model.safetensors")
        if _own_llm(cfg):
            shutil.copytree(llm_source, tmp / "llm")
        else:
            llm = bundle.model.llm
            if peft_adapter:
                save_adapter(llm, tmp / ADAPTER_DIR, (out / "llm").resolve())
            if merge_lora:
                llm = llm.merge_and_unload()  # W + scale * B @ A, in float32
                tensors = {k: v for k, v in tensors.items() if not k.startswith("llm.")}
                cfg.llm.lora_rank = 0
            elif has_lora:
                llm = llm.unload()  # the base weights; the LoRA stays in model.safetensors
            cfg.llm.weights_hash = save_llm(llm, llm_source, tmp / "llm")
        cfg.compressor.label_llm = _export_label_llm(cfg, folder, llm_source, tmp)
        cfg.llm.path = "llm"  # relative to the model folder
        save_tensors(tensors, tmp / "model.safetensors")
        save_config(cfg, tmp / "config.yaml")
        for name in CTC_LABEL_FILES:
            if (folder / name).exists():
                shutil.copy2(folder / name, tmp / name)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"export: wrote {out}{' (LoRA merged)' if merge_lora else ''}", file=sys.stderr)
    return out


def save_llm(llm: torch.nn.Module, source: Path, folder: Path) -> str:
    """Save ``llm`` (and the tokenizer of ``source``, its base folder) into ``folder`` as safetensors,
    in the dtype ``source`` stores; returns the weights hash of the saved folder."""
    from transformers import AutoTokenizer

    from ..models.llm import weights_hash

    llm.to(stored_dtype(source)).save_pretrained(folder)
    # the tokenizer as the base folder has it (load_llm sets a pad token on its own copy)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(folder)
    return weights_hash(folder)


def save_adapter(llm: torch.nn.Module, folder: Path, base: Path) -> None:
    """Write ``llm``'s LoRA (a peft model) as ``adapter_config.json`` + ``adapter_model.safetensors``,
    its ``base_model_name_or_path`` set to ``base`` (the export's own LLM, not the training one)."""
    llm.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model card names the training LLM's path
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(base)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def stored_dtype(folder: Path) -> torch.dtype:
    """The dtype of a Hugging Face folder's floating-point weights, from the safetensors headers."""
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                dtype = SAFETENSORS_DTYPES.get(f.get_slice(name).get_dtype())
                if dtype is not None:
                    return dtype
    return torch.float32


def _own_llm(cfg: ExperimentConfig) -> bool:
    """A model that carries its own LLM (from scratch) or tokenizer (encoder-decoder) folder."""
    return cfg.llm.init == "scratch" or cfg.speech_llm.system == "encoder_decoder"


def _export_label_llm(cfg: ExperimentConfig, folder: Path, llm_source: Path, tmp: Path) -> str:
    """``compressor.label_llm`` of the export: "" (= OUT/llm) unless the CTC labels are tokens of
    another LLM, whose tokenizer is then copied to OUT/label_llm. Other labels need no LLM; ""
    keeps loading from resolving a shipped name into the cache."""
    if cfg.compressor.labels != "llm_tokens":
        return ""
    from transformers import AutoTokenizer

    from ..models.build import label_llm_path

    label = label_llm_path(cfg, folder)
    if label.resolve() == llm_source.resolve():
        return ""
    AutoTokenizer.from_pretrained(label, local_files_only=True).save_pretrained(tmp / "label_llm")
    return "label_llm"
