"""The text LLM side of Speech-LLaMA: load a frozen decoder-only LLM with LoRA, and its attention mask.

A training or decoding sequence is laid out as

    [prefix text][audio vectors][suffix text][target tokens][eos]

where the prefix/suffix text come from :func:`speechllama.models.prompt.build_prompt`, the audio
vectors are the audio encoder's output (already in the LLM's embedding space) and the target tokens
are the transcript or translation. What the LLM must offer is the contract in
:mod:`speechllama.models.llm_family`. :func:`audio_text_mask` gives the attention mask: causal
everywhere, optionally bidirectional inside the audio block (arXiv 2307.03917).
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..atomic import write_text_atomic
from ..errors import MissingFileError, UsageError
from .llm_family import family_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

HASH_CACHE_NAME = ".speechllama-weights-sha256.json"
HASH_SETTLE_S = 2.0  # files younger than this are hashed but not cached (mtime granularity; "racy git")


# ---------------------------------------------------------------------------------------------------------
# Weights fingerprint
# ---------------------------------------------------------------------------------------------------------


def weights_hash(path: str | os.PathLike) -> str:
    """sha256 over a folder's ``*.safetensors`` files (sorted names and contents), as a hex string.

    The result is cached in a small json file in the folder, keyed by each file's size and mtime; files
    changed within the last ``HASH_SETTLE_S`` seconds are not cached (a coarse mtime could hide a rewrite).
    """
    path = Path(path)
    require_weights(path)
    files = sorted(path.glob("*.safetensors"))
    stats = {f.name: os.stat(f) for f in files}
    key = {name: [st.st_size, st.st_mtime_ns] for name, st in stats.items()}
    cache_file = path / HASH_CACHE_NAME
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("files") == key:
            return cached["sha256"]
    except (OSError, ValueError, AttributeError):
        pass

    sha = hashlib.sha256()
    for f in files:
        sha.update(f.name.encode() + b"\0" + stats[f.name].st_size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
    digest = sha.hexdigest()
    settled = all(time.time_ns() - st.st_mtime_ns > HASH_SETTLE_S * 1e9 for st in stats.values())
    if settled:
        try:
            write_text_atomic(cache_file, json.dumps({"files": key, "sha256": digest}))
        except OSError:
            pass  # a read-only model folder: the hash is simply recomputed next time
    return digest


def require_weights(path: Path) -> None:
    """A FileNotFoundError unless the folder holds ``*.safetensors`` weights (a shape-only folder,
    config.json alone, such as configs/llama-7b, serves ``speechllama plan`` and nothing else)."""
    if not any(Path(path).glob("*.safetensors")):
        what = "config.json only, " if (Path(path) / "config.json").is_file() else ""
        raise MissingFileError(f"{path}: no weights ({what}no *.safetensors files): "
                                f"it can be planned (speechllama plan), not trained or loaded")


# ---------------------------------------------------------------------------------------------------------
# Loading with LoRA
# ---------------------------------------------------------------------------------------------------------


def load_llm(
    path: str | os.PathLike,
    lora_rank: int = 2,
    lora_alpha: float | None = None,
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    lora_dropout: float = 0.0,
    dtype: torch.dtype = torch.float32,
    train_base: bool = False,
    attn_implementation: str = "sdpa",
) -> tuple[nn.Module, "PreTrainedTokenizerBase"]:
    """Load a local Hugging Face causal LM (a family of :mod:`.llm_family`) with frozen weights and, if ``lora_rank > 0``, LoRA.
    ``train_base=True`` (a model trained from scratch) leaves every weight trainable and takes no LoRA.

    ``lora_alpha=None`` means ``lora_alpha = lora_rank`` (LoRA scaling 1). LoRA's B matrices start at zero, so
    the wrapped model computes exactly what the base model does until it is trained. Returns
    ``(model, tokenizer)``; the model is a peft ``PeftModelForCausalLM`` with LoRA, the plain model without.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .shipped import resolve_llm

    path = resolve_llm(str(path))  # a shipped LLM's short name works too
    if not (path / "config.json").is_file():
        raise MissingFileError(f"{path}: not a Hugging Face model folder (no config.json)")
    if lora_rank < 0:
        raise UsageError(f"lora_rank must be >= 0, got {lora_rank}")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    family_of(config)  # an unsupported architecture fails here, in one line naming its model_type
    require_weights(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
        )
    except ValueError as e:
        raise UsageError(
            f"{path}: not a causal LM that transformers can load (model_type {config.model_type!r}): {e}"
        ) from e
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    if train_base:
        if lora_rank:
            raise UsageError("a fully trained LLM takes no LoRA: set llm.lora_rank=0")
        return model, tokenizer
    return add_lora(model, lora_rank, lora_alpha, lora_targets, lora_dropout, where=str(path)), tokenizer


def add_lora(
    model: nn.Module,
    lora_rank: int = 2,
    lora_alpha: float | None = None,
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    lora_dropout: float = 0.0,
    where: str = "",
) -> nn.Module:
    """Freeze ``model`` and, if ``lora_rank > 0``, wrap it with peft LoRA on ``lora_targets``
    (:func:`load_llm`; ``where`` names the model in errors)."""
    config = model.config
    model.requires_grad_(False)
    if lora_rank <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora_targets if t not in names]
    if missing:
        raise UsageError(f"{where or config.model_type}: llm.lora_targets {missing} are not "
                         f"modules of this {config.model_type} model (its family uses "
                         f"{list(family_of(config).lora_targets)})")
    lora = LoraConfig(
        r=lora_rank,
        lora_alpha=lora_rank if lora_alpha is None else lora_alpha,
        target_modules=list(lora_targets),
        lora_dropout=lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft 0.21 still asks transformers 5 for `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def llm_from_config(
    config,
    lora_rank: int = 2,
    lora_alpha: float | None = None,
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    dtype: torch.dtype = torch.float32,
    train_base: bool = False,
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """The model :func:`load_llm` builds, from a transformers ``config`` alone, with every tensor on
    the meta device (shapes and dtypes, no memory, no file read: ``speechllama plan``)."""
    from transformers import AutoModelForCausalLM

    family_of(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 attn_implementation=attn_implementation)
        if train_base:
            return model
        return add_lora(model, lora_rank, lora_alpha, lora_targets)


def _stable_name(name: str) -> str:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight'
    -> 'model.layers.0.self_attn.q_proj.lora_A.weight'."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".default.", ".")


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) tensors of a :func:`load_llm` model, named without peft's adapter name."""
    return {_stable_name(n): p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy tensors saved by :func:`trainable_state_dict` into ``model``; names and shapes must match."""
    params = {_stable_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(params.keys() - state_dict.keys()), sorted(state_dict.keys() - params.keys())
    if missing or unexpected:
        raise UsageError(
            f"LLM trainable weights do not match the model (was it built with the same LoRA rank/targets?): "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != state_dict[name].shape:
                got = tuple(state_dict[name].shape)
                raise UsageError(f"{name}: shape {got} does not fit {tuple(p.shape)}")
            p.copy_(state_dict[name])


# ---------------------------------------------------------------------------------------------------------
# Attention mask and prompt
# ---------------------------------------------------------------------------------------------------------


def audio_text_mask(
    audio_start: torch.Tensor,
    audio_len: torch.Tensor,
    valid: torch.Tensor,
    causal_audio: bool,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive attention mask (B, 1, T, T); row b has audio at [audio_start[b], audio_start[b]+audio_len[b]).

    Every position attends causally to the valid (non-pad) positions up to itself. With ``causal_audio=False``
    the audio positions also see the whole audio block (bidirectional inside it). A pad query sees itself
    only, so no row is fully masked (that would give NaN in sdpa). 0 = attend, ``finfo(dtype).min`` = masked.
    """
    B, T = valid.shape
    pos = torch.arange(T, device=valid.device)
    allowed = (pos[:, None] >= pos[None, :]) & valid[:, None, :]  # (B, T, T) [query, key]
    if not causal_audio:
        start = audio_start.to(valid.device)[:, None]  # (B, 1)
        end = start + audio_len.to(valid.device)[:, None]  # (B, 1)
        in_audio = (pos[None, :] >= start) & (pos[None, :] < end) & valid  # (B, T)
        allowed = allowed | (in_audio[:, :, None] & in_audio[:, None, :])  # (B, T, T)
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=valid.device)
    mask = torch.zeros(B, 1, T, T, dtype=dtype, device=valid.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)  # (B, 1, T, T)


# ---------------------------------------------------------------------------------------------------------
# A small LLaMA trained from scratch (the paper's decoder-only baseline)
# ---------------------------------------------------------------------------------------------------------


def create_scratch_llm(folder: str | os.PathLike, texts: list[str], hidden: int, layers: int,
                       heads: int, ff_dim: int, vocab_size: int, seed: int = 0,
                       with_model: bool = True) -> Path:
    """Write a randomly initialised LLaMA and a sentencepiece-unigram tokenizer trained on ``texts``
    (the target side of the training data) as a Hugging Face folder; atomic, reused if present.
    ``with_model=False`` writes the tokenizer alone (the encoder-decoder's output vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return folder
    tokenizer = _target_tokenizer(texts, vocab_size)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=ff_dim,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=True)
    torch.manual_seed(seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    if with_model:
        LlamaForCausalLM(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another rank wrote the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _target_tokenizer(texts: list[str], vocab_size: int):
    """A unigram tokenizer trained with sentencepiece (deterministic: one thread), wrapped as a
    Hugging Face fast tokenizer. (tokenizers' own unigram trainer gave a different vocabulary
    from run to run.) Ids: <unk> 0, <s> 1, </s> 2, <pad> 3."""
    import io

    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in texts if t.strip()]), model_writer=buf,
        vocab_size=vocab_size, model_type="unigram", character_coverage=1.0,
        hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=1,
        minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
