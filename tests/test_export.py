"""`speechllama export`: a self-contained model folder (the LLM inside), merged or with a peft
adapter, that loads to the very outputs of the checkpoint it came from."""

import json
import os
from contextlib import contextmanager

import pytest
import torch
from conftest import CORPUS_WORDS, TINY, TWO_UTTERANCES, train_on_another_llms_labels, train_two_stages
from safetensors.torch import load_file

from speechllama import load
from speechllama.cli import main
from speechllama.inference.api import features_of
from speechllama.models import shipped
from speechllama.models.llm import weights_hash
from speechllama.models.llm_family import llm_inputs

USER_CACHE = str(shipped.CACHE_DIR)  # before any test points it elsewhere


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, stage-2 run, tiny LLM folder): both stages trained briefly (quality irrelevant; the
    LoRA only has to be non-zero)."""
    root = tmp_path_factory.mktemp("export")
    _, run, llm = train_two_stages(root, 60, 60)
    return root, run, llm


def waves(root):
    return [str(root / "corpus" / "audio" / f"{uid}.wav") for uid, _, _ in TWO_UTTERANCES]


def logits_of(model, wave):
    """The LLM's logits (1, L, V) of one forward pass over the translation prompt with ``wave``."""
    b = model.bundle
    device = next(b.model.parameters()).device
    feats = b.cmvn(features_of(wave))[None].to(device)  # (1, T, 80)
    before, after = model.prompter("st", "de", "en")
    with torch.no_grad():
        audio, n = b.model.encode_audio(feats, torch.tensor([feats.shape[1]], device=device))
        embeds, mask, valid, _ = b.model.assemble(audio, n, [before], [after])
        embeds, mask = llm_inputs(b.model.llm, embeds, mask)
        pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
        return b.model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits.cpu()


@pytest.fixture(scope="module")
def reference(trained):
    """The checkpoint's outputs: float32 logits of the first file, texts in float32 and bf16."""
    root, run, _ = trained
    fp32 = load(run, dtype=torch.float32)
    lora_b = [p for n, p in fp32.bundle.model.llm.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # else the comparisons prove nothing
    return {"logits": logits_of(fp32, waves(root)[0]),
            "fp32": fp32.translate(waves(root), src_lang="de"),
            "bf16": load(run).translate(waves(root), src_lang="de")}


@pytest.fixture(scope="module")
def exports(trained):
    """OUT folders of `speechllama export`: plain, --merge-lora, --peft-adapter."""
    root, run, _ = trained
    flags = {"plain": [], "merged": ["--merge-lora"], "adapter": ["--peft-adapter"]}
    outs = {}
    for name, extra in flags.items():
        outs[name] = root / f"export-{name}"
        assert main(["export", "--model", str(run), "--out", str(outs[name]), *extra]) == 0
    return outs


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """The shipped-LLM cache empty, and resolving a shipped LLM into it an error."""
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setenv("SPEECHLLAMA_CACHE", str(empty))
    monkeypatch.setattr(shipped, "CACHE_DIR", empty)

    def unreachable(name="", cache_dir=None):
        raise AssertionError(f"the export resolved the shipped LLM {name!r} in the cache")

    monkeypatch.setattr(shipped, "shipped_llm_path", unreachable)


@contextmanager
def moved(*folders):
    """``folders`` renamed away for the duration (as if deleted), then put back."""
    for f in folders:
        os.rename(f, f.with_name(f.name + "-moved"))
    try:
        yield
    finally:
        for f in folders:
            os.rename(f.with_name(f.name + "-moved"), f)


@pytest.fixture
def without_training_llm(trained, no_cache):
    """The training LLM folder moved away, the shipped-LLM cache unreachable."""
    with moved(trained[2]):
        yield


def text_files(folder):
    return [p for p in folder.rglob("*") if p.suffix in {".json", ".yaml", ".txt", ".md", ".jinja"}]


@pytest.mark.parametrize("kind", ["plain", "merged", "adapter"])
def test_export_loads_alone_with_the_checkpoints_outputs(trained, reference, exports, kind,
                                                         without_training_llm):
    root, run, llm = trained
    out = exports[kind]
    for f in text_files(out):  # nothing points back at the training LLM, the run or the cache
        text = f.read_text()
        assert not [s for s in (str(llm), str(run), USER_CACHE) if s in text], f
    fp32 = load(out, dtype=torch.float32)
    torch.testing.assert_close(logits_of(fp32, waves(root)[0]), reference["logits"])
    assert fp32.translate(waves(root), src_lang="de") == reference["fp32"]
    assert load(out).translate(waves(root), src_lang="de") == reference["bf16"]


def test_merged_export_has_no_lora_and_keeps_the_base_dtype(exports):
    out = exports["merged"]
    cfg = (out / "config.yaml").read_text()
    assert "lora_rank: 0" in cfg and "path: llm\n" in cfg
    assert f"weights_hash: {weights_hash(out / 'llm')}" in cfg
    assert not any(k.startswith("llm.") for k in load_file(str(out / "model.safetensors")))
    assert {t.dtype for t in load_file(str(out / "llm" / "model.safetensors")).values()} == {torch.float32}
    plain = load_file(str(exports["plain"] / "model.safetensors"))
    assert any(".lora_B." in k for k in plain)  # unmerged: the LoRA stays beside the base LLM
    assert not (out / "adapter").exists() and not (exports["plain"] / "adapter").exists()


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft 0.21
def test_peft_adapter_loads_on_the_exported_base_and_equals_the_merged_llm(exports):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = exports["adapter"]
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json",
                                                                  "adapter_model.safetensors"]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "llm").resolve())
    base = AutoModelForCausalLM.from_pretrained(out / "llm", dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(exports["merged"] / "llm", dtype=torch.float32).eval()
    ids = torch.randint(3, len(CORPUS_WORDS), (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, merged(input_ids=ids).logits)
        with adapted.disable_adapter():  # the adapter does something: the base alone differs
            assert not torch.allclose(adapted(input_ids=ids).logits, merged(input_ids=ids).logits)


def test_llm_token_labels_of_another_llm_travel_with_the_export(trained, tmp_path, no_cache):
    """CTC labels that are one LLM's tokens, stage 2 on another: the export carries the labels'
    tokenizer (no weights) in OUT/label_llm and loads with both LLMs gone."""
    from speechllama.checkpoint import latest_checkpoint

    root, _, label_llm = trained
    run = train_on_another_llms_labels(root / "corpus", label_llm, tmp_path, ctc_steps=10)
    checkpoint = load(latest_checkpoint(run), dtype=torch.float32)
    expected = checkpoint.transcribe(waves(root), src_lang="de"), logits_of(checkpoint, waves(root)[0])
    out = tmp_path / "export"
    assert main(["export", "--model", str(tmp_path / "s2"), "--out", str(out), "--merge-lora"]) == 0
    assert "label_llm: label_llm" in (out / "config.yaml").read_text()
    assert not list((out / "label_llm").glob("*.safetensors"))
    with moved(label_llm, tmp_path / "other-llm"):
        model = load(out, dtype=torch.float32)
        assert model.bundle.ctc_tokenizer.llm_ids == checkpoint.bundle.ctc_tokenizer.llm_ids
        assert model.transcribe(waves(root), src_lang="de") == expected[0]
        torch.testing.assert_close(logits_of(model, waves(root)[0]), expected[1])


def test_a_model_with_its_own_llm_exports_it_and_has_no_lora_to_merge(trained, tmp_path, capsys):
    """llm.init=scratch: the trained LLM's folder is copied; --merge-lora is a clear error."""
    root, run, _ = trained
    assert main(["train", "speech-llm", "--config", str(TINY), "--data", str(root / "corpus"),
                 "--out", str(tmp_path / "s2"), "--compressor", str(run.parent / "ctc"),
                 "llm.init=scratch", "llm.lora_rank=0", "llm.scratch_hidden=16",
                 "llm.scratch_layers=1", "llm.scratch_heads=2", "llm.scratch_ff=32",
                 "llm.scratch_vocab=30", "train.max_steps=2"]) == 0
    assert main(["export", "--model", str(tmp_path / "s2"), "--out", str(tmp_path / "m"),
                 "--merge-lora"]) == 2
    assert "no LoRA to merge" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "s2"), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")  # the folder, on stdout
    expected = load(tmp_path / "s2").translate(waves(root), src_lang="de")
    with moved(tmp_path / "s2"):
        assert load(tmp_path / "out").translate(waves(root), src_lang="de") == expected


def test_export_errors_are_one_line_and_exit_2(trained, exports, tmp_path, capsys):
    _, run, _ = trained
    missing = tmp_path / "nothing"
    cases = {str(missing): ["--model", str(missing), "--out", str(tmp_path / "a")],
             "--merge-lora and --peft-adapter": ["--model", str(run), "--out", str(tmp_path / "b"),
                                                 "--merge-lora", "--peft-adapter"],
             str(exports["plain"]): ["--model", str(run), "--out", str(exports["plain"])]}
    for named, args in cases.items():
        assert main(["export", *args]) == 2, named
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert captured.out == "" and err.startswith("speechllama: error: ") and "\n" not in err, err
        assert named in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
