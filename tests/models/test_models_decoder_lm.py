"""decoder_lm: logits equal HF GPT-2 / Llama (weights through our converter); KV-cache decoding equals the
full pass step by step with left padding; rows are independent of each other."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from gensys.models import build_model
from gensys.models.convert import model_from_hf
from gensys.models.decoder_lm import DecoderLM, DecoderLMConfig, gpt2_config, llama_config

hf_logging.set_verbosity_error()
V = 101


def _hf_gpt2() -> GPT2LMHeadModel:
    cfg = GPT2Config(
        vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(cfg).eval()


def _hf_llama(n_kv: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=n_kv,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        bos_token_id=0,
        eos_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


HF_BUILDERS = {"gpt2": _hf_gpt2, "llama_gqa": lambda: _hf_llama(2), "llama_mha": lambda: _hf_llama(4)}


def _left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, V, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :4] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("style", list(HF_BUILDERS))
def test_logits_equal_hf(style):
    torch.manual_seed(0)
    hf = HF_BUILDERS[style]()
    ours = model_from_hf(hf)
    ids, mask = _left_padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-5, rtol=0)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
        out = ours(ids, attention_mask=mask)
        real = mask.bool()
        assert (out[real] - ref[real]).abs().max() <= 1e-5


# configurations whose cache path must equal their full pass (HF-shaped ones plus our extra options)
CACHE_CONFIGS = {
    "gpt2": gpt2_config(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=64),
    "llama_gqa": llama_config(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48),
    "llama_mqa_partial_rope": llama_config(
        vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=1, d_ff=48, rotary_fraction=0.5
    ),
    "sinusoidal_relu": DecoderLMConfig(
        vocab_size=V,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        pos="sinusoidal",
        activation="relu",
        norm="layernorm",
    ),
}


@pytest.mark.parametrize("name", list(CACHE_CONFIGS))
def test_kv_cache_decoding_equals_full_forward_with_left_padding(name):
    torch.manual_seed(1)
    model = DecoderLM(CACHE_CONFIGS[name]).eval()
    ids, mask = _left_padded_batch()
    prompt = 5
    with torch.no_grad():
        full = model(ids, attention_mask=mask)  # (B, T, V)
        cache = model.new_cache(initial_capacity=4)
        steps = [model(ids[:, :prompt], attention_mask=mask[:, :prompt], cache=cache)]
        for t in range(prompt, ids.shape[1]):
            steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache))
    inc = torch.cat(steps, dim=1)
    real = mask.bool()
    torch.testing.assert_close(inc[real], full[real], atol=1e-5, rtol=1e-5)
    assert cache.length == ids.shape[1]


def test_cache_without_mask_continues_positions_from_cache_length():
    torch.manual_seed(2)
    model = DecoderLM(CACHE_CONFIGS["gpt2"]).eval()
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        first = model(ids[:, :3], cache=cache)
        rest = [model(ids[:, t : t + 1], cache=cache, last_only=True) for t in range(3, 7)]
    torch.testing.assert_close(torch.cat([first, *rest], 1), full, atol=1e-5, rtol=1e-5)
    # last_only gives just the final position
    torch.testing.assert_close(model(ids, last_only=True), full[:, -1:], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_a_row_does_not_depend_on_the_other_rows(name):
    torch.manual_seed(3)
    model = DecoderLM(CACHE_CONFIGS[name]).eval()
    ids, mask = _left_padded_batch()
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)
        for b in range(ids.shape[0]):
            n_real = int(mask[b].sum())
            alone = model(ids[b : b + 1, -n_real:])  # the same row without any padding
            torch.testing.assert_close(batched[b, -n_real:], alone[0], atol=1e-5, rtol=1e-5)


def test_cache_reorder_and_expand_keep_decoding_consistent():
    torch.manual_seed(4)
    model = DecoderLM(CACHE_CONFIGS["llama_gqa"]).eval()
    ids = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        cache = model.new_cache()
        model(ids[:, :4], cache=cache)
        cache.expand(2)  # rows 0,0,1,1
        cache.reorder(torch.tensor([3, 0]))  # keep the second copy of row 1, then row 0
        step = model(ids[[1, 0], 4:5], cache=cache)
        full = model(ids[[1, 0], :5])
    torch.testing.assert_close(step[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)


def test_config_round_trip_tying_and_gradients():
    cfg = gpt2_config(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
    d = asdict(cfg)
    assert DecoderLMConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="n_layer"):
        DecoderLMConfig.from_dict({**d, "n_layer": 3})
    with pytest.raises(ValueError, match="pos"):
        DecoderLMConfig(pos="alibi")
    model = build_model("decoder_lm", d)
    assert isinstance(model, DecoderLM) and model.lm_head.weight is model.tok_emb.weight
    names = {n for n, _ in model.named_modules()}
    for n in (
        "tok_emb",
        "blocks.0.attn.q_proj",
        "blocks.1.mlp.down_proj",
        "blocks.0.attn_norm",
        "norm",
        "lm_head",
    ):
        assert n in names
    ids = torch.randint(0, V, (2, 5))
    loss = torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    loss.backward()
    assert model.tok_emb.weight.grad is not None and model.tok_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="family"):
        build_model("encoder_only", d)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_bfloat16_forward_keeps_its_dtype(name):
    torch.manual_seed(5)
    model = DecoderLM(CACHE_CONFIGS[name]).eval()
    ids, mask = _left_padded_batch()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask)
        model.to(torch.bfloat16)
        out = model(ids, attention_mask=mask)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    real = mask.bool()
    assert (out.float()[real] - ref[real]).abs().max() < 0.05 * ref[real].abs().max() + 0.02
