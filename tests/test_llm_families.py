"""The LLM contract (speechllama/models/llm_family.py) for every supported family, each on a tiny
random model made here (2 layers): LLaMA, Gemma 3 (with a sliding window shorter than the
sequences, so the window matters), Qwen 2 and Qwen 3."""

import pytest
import torch
from conftest import LLM_WORDS, tiny_tokenizer
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from speechllama.checkpoint import load_tensors, save_tensors
from speechllama.models.decode import DecodingOptions, generate
from speechllama.models.llm import audio_text_mask, load_llm, load_trainable_state_dict, trainable_state_dict
from speechllama.models.llm_family import (
    UnsupportedLLMError,
    embed_scale,
    family_of,
    head_logits,
    llm_attention_mask,
)
from speechllama.models.speech_llm import IGNORE, OutputVocab, next_token_loss

HIDDEN, V = 32, len(LLM_WORDS)
COMMON = dict(vocab_size=V, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SLIDING_WINDOW = 4  # Gemma 3: shorter than every sequence below
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON)),
    "gemma3_text": lambda: Gemma3ForCausalLM(Gemma3TextConfig(
        **COMMON, head_dim=8, query_pre_attn_scalar=8, sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"])),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=8)),
}
NO_REPEAT_GUARD = dict(no_repeat_ngram_size=0, max_tokens_per_second=0)


@pytest.fixture(scope="module", params=list(FAMILIES))
def folder(request, tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    FAMILIES[request.param]().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def hidden_with_audio(model, before, audio, after, causal_audio):
    """Last hidden state (T, C) of [before tokens][audio vectors][after tokens], one row."""
    embed = model.get_input_embeddings()
    x = torch.cat([embed(before), audio, embed(after)])[None]  # (1, T, C)
    T = x.shape[1]
    mask = audio_text_mask(torch.tensor([len(before)]), torch.tensor([len(audio)]),
                           torch.ones(1, T, dtype=torch.bool), causal_audio)
    with torch.no_grad():
        out = model(inputs_embeds=x, attention_mask=llm_attention_mask(model.config, mask),
                    position_ids=torch.arange(T)[None], output_hidden_states=True)
    return out.hidden_states[-1][0]


def test_family_and_embedding_scale(folder):
    model, _ = load_llm(folder, lora_rank=0)
    family = family_of(model.config)
    assert model.config.model_type in family.model_types
    ids = torch.tensor([3, 7, 9])
    with torch.no_grad():  # what the LLM reads = its table's rows times the family's scale
        torch.testing.assert_close(model.get_input_embeddings()(ids),
                                   model.get_input_embeddings().weight[ids] * embed_scale(model.config))
    assert (embed_scale(model.config) != 1.0) == (model.config.model_type == "gemma3_text")


@pytest.mark.parametrize("causal_audio", [False, True])
def test_audio_block_bidirectional_text_causal(folder, causal_audio):
    model, _ = load_llm(folder, lora_rank=0)
    torch.manual_seed(1)
    before, after = torch.tensor([1, 5, 6]), torch.tensor([7, 8, 9, 10])
    audio = torch.randn(3, HIDDEN)
    h = hidden_with_audio(model, before, audio, after, causal_audio)
    moved = audio.clone()
    moved[-1] += 1.0
    h2 = hidden_with_audio(model, before, moved, after, causal_audio)
    a = len(before)
    assert (not torch.allclose(h[a], h2[a], atol=1e-6)) == (not causal_audio)  # 1st audio sees the last
    assert torch.equal(h[:a], h2[:a])  # text before the audio never sees it
    changed = after.clone()
    changed[2] = 20
    h3 = hidden_with_audio(model, before, audio, changed, causal_audio)
    t = a + len(audio) + 2
    assert torch.equal(h[:t], h3[:t])  # text stays causal
    assert not torch.allclose(h[t], h3[t])


def uncached_greedy(model, embeds, audio_start, audio_len, steps, vocab=None):
    """Greedy tokens by full recomputation (no cache, no padding) of one row (T, C)."""
    tokens = []
    for _ in range(steps):
        x = torch.cat([embeds, model.get_input_embeddings()(torch.tensor(tokens, dtype=torch.long))])
        T = x.shape[0]
        mask = audio_text_mask(torch.tensor([audio_start]), torch.tensor([audio_len]),
                               torch.ones(1, T, dtype=torch.bool), causal_audio=False)
        with torch.no_grad():
            logits = model(inputs_embeds=x[None], attention_mask=llm_attention_mask(model.config, mask),
                           position_ids=torch.arange(T)[None]).logits[0, -1]
        if vocab is not None:
            logits = torch.full_like(logits, -torch.inf).index_copy(0, vocab, logits[vocab])
        tokens.append(int(logits.argmax()))
    return tokens


@pytest.mark.parametrize("restricted", [False, True])
def test_cached_left_padded_decoding_equals_uncached(folder, restricted):
    model, _ = load_llm(folder, lora_rank=0)
    model.eval()
    torch.manual_seed(2)
    embed = model.get_input_embeddings()
    rows = []  # (prefix embeds, audio start, audio length): [2 or 4 tokens][3 audio vectors][2 tokens]
    for n_before in (2, 4):
        before = torch.randint(3, V, (n_before,))
        with torch.no_grad():
            rows.append((torch.cat([embed(before), torch.randn(3, HIDDEN), embed(torch.tensor([5, 6]))]),
                         n_before, 3))
    P = max(len(r[0]) for r in rows)
    embeds = torch.stack([torch.cat([torch.zeros(P - len(e), HIDDEN), e]) for e, _, _ in rows])
    valid = torch.stack([torch.arange(P) >= P - len(e) for e, _, _ in rows])
    pad = torch.tensor([P - len(e) for e, _, _ in rows])
    mask = audio_text_mask(pad + torch.tensor([s for _, s, _ in rows]), torch.tensor([a for _, _, a in rows]),
                           valid, causal_audio=False)
    vocab = torch.tensor([2, 4, 8, 9, 15, 16, 23, 42]) if restricted else None
    options = DecodingOptions(max_new_tokens=8, **NO_REPEAT_GUARD)
    with torch.no_grad():
        out = generate(model, embeds, mask, valid, -1, options, vocab=vocab)  # -1: no EOS, 8 tokens
    for b, (e, start, length) in enumerate(rows):
        assert out[b] == uncached_greedy(model, e, start, length, 8, vocab), b
        if vocab is not None:
            assert set(out[b]) <= set(vocab.tolist())
    assert len(rows[1][0]) + 8 > 2 * SLIDING_WINDOW  # long enough for Gemma's window to matter


def test_zero_lora_is_the_base_model_and_saved_lora_reloads(folder, tmp_path):
    base, _ = load_llm(folder, lora_rank=0)
    a, _ = load_llm(folder, lora_rank=2)
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids).logits, base(input_ids=ids).logits, rtol=0, atol=0)
        for p in a.parameters():
            if p.requires_grad:
                p.normal_()
    save_tensors(trainable_state_dict(a), tmp_path / "lora.safetensors")
    b, _ = load_llm(folder, lora_rank=2)
    load_trainable_state_dict(b, load_tensors(tmp_path / "lora.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(b(input_ids=ids).logits, a(input_ids=ids).logits, rtol=0, atol=0)
        assert not torch.allclose(a(input_ids=ids).logits, base(input_ids=ids).logits)


def test_restricted_head_and_loss(folder):
    """The restricted head is the full head's columns; its loss is the cross-entropy of the softmax
    over those tokens."""
    model, _ = load_llm(folder, lora_rank=2)
    torch.manual_seed(3)
    hidden = torch.randn(2, 5, HIDDEN)
    ids = torch.tensor([2, 5, 6, 11, 30])
    with torch.no_grad():
        torch.testing.assert_close(head_logits(model, hidden, ids), head_logits(model, hidden)[..., ids])
    embeds = torch.randn(2, 7, HIDDEN)
    valid = torch.ones(2, 7, dtype=torch.bool)
    mask = audio_text_mask(torch.tensor([1, 1]), torch.tensor([3, 3]), valid, causal_audio=False)
    targets = [[5, 11, 2], [30, 2]]
    labels = torch.full((2, 7), IGNORE)
    labels[0, -3:] = torch.tensor(targets[0])
    labels[1, -2:] = torch.tensor(targets[1])
    vocab = OutputVocab(ids, V)
    with torch.no_grad():
        restricted = next_token_loss(model, embeds, mask, valid, labels, targets, vocab)
        full = model(inputs_embeds=embeds, attention_mask=llm_attention_mask(model.config, mask)).logits
    logp = full[:, -4:-1].float()[..., ids].log_softmax(-1)  # (B, 3, V') predicts positions -3..-1
    pos = vocab.positions(labels[:, -3:])
    expected = -logp.gather(-1, pos.clamp(min=0)[..., None])[..., 0][pos != IGNORE].mean()
    torch.testing.assert_close(restricted, expected)
    with pytest.raises(ValueError, match="outside the model's output vocabulary"):
        vocab.positions(torch.tensor([[7]]))


def test_unsupported_architecture_is_one_line(tmp_path):
    GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(UnsupportedLLMError) as e:
        load_llm(tmp_path)
    assert str(e.value) == ("unsupported LLM architecture: model_type 'gpt2' "
                            "(supported: llama, gemma3_text, qwen2, qwen3)")
