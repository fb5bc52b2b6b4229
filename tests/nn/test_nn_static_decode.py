"""The fixed-shape decode step (`gensys.nn.static_decode.StaticDecoder`) equals the model's module path.

Each case prefills a left-padded batch through the model with a `KVCache`, hands the cache to a
StaticDecoder and steps both paths on the same tokens: the logits agree at every step, through `expand`
(beams / samples) and `reorder` (beam search's parents) too.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from gensys.models.decoder_lm import DecoderLM, DecoderLMConfig, gpt2_config, llama_config
from gensys.models.seq2seq import Seq2Seq, marian_config, t5_config
from gensys.nn.layers import decoding
from gensys.nn.static_decode import StaticDecoder

V = 64

DECODERS = {
    "llama_gqa_rope": llama_config(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48),
    "llama_mqa": llama_config(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=1, d_ff=48),
    "gpt2_learned": gpt2_config(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=64),
    "sinusoidal_relu": DecoderLMConfig(
        vocab_size=V,
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_ff=40,
        pos="sinusoidal",
        norm="layernorm",
        activation="relu",
        attn_bias=True,
        mlp_bias=True,
    ),
    "partial_rotary_geglu": DecoderLMConfig(
        vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=40, rotary_fraction=0.5, activation="geglu"
    ),
}


def _batch(b: int = 3, t: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, :3] = False  # left padding of different lengths
    mask[2, :1] = False
    return ids, mask


def _decoder(name: str) -> DecoderLM:
    torch.manual_seed(0)
    model = DecoderLM(DECODERS[name]).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so folding mistakes would show
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def _module_step(model, cache, mask, tokens):
    """One module-path step for tokens (N,), with the grown mask and per-row positions."""
    positions = mask.sum(1, keepdim=True)  # (N, 1)
    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
    logits = model(tokens[:, None], attention_mask=mask, positions=positions, cache=cache)[:, -1]
    return logits, mask


@pytest.mark.parametrize("name", DECODERS)
def test_static_steps_equal_module_steps_with_left_padding_expand_and_reorder(name):
    model = _decoder(name)
    ids, mask = _batch()
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode(), decoding(model):
        cache = model.new_cache()
        logits = model(ids, attention_mask=mask, positions=positions, cache=cache)[:, -1]
        dec = StaticDecoder(model.step_spec())
        state = dec.load(cache, mask, capacity=ids.shape[1] + 8)
        assert state.capacity == ids.shape[1] + 8
        tok = logits.argmax(-1)
        # Two plain steps, then 2 rows per prompt, then a reorder that swaps and duplicates rows in groups.
        for i in range(6):
            if i == 2:
                cache.expand(2)
                state.expand(2)
                mask, tok = mask.repeat_interleave(2, 0), tok.repeat_interleave(2, 0)
            if i == 4:
                index = torch.tensor([1, 1, 2, 3, 5, 4])
                cache.reorder(index)
                state.reorder(index)
                mask, tok = mask.index_select(0, index), tok.index_select(0, index)
            want, mask = _module_step(model, cache, mask, tok)
            got = dec.step(state, tok)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
            tok = want.argmax(-1)


@pytest.mark.parametrize("cfg", ["marian", "t5"])
def test_encoder_decoder_static_steps_equal_module_steps(cfg):
    torch.manual_seed(0)
    make = marian_config if cfg == "marian" else t5_config
    extra = dict(lm_head_bias=True) if cfg == "marian" else {}
    model = Seq2Seq(
        make(vocab_size=V, d_model=32, n_enc_layers=2, n_dec_layers=2, n_heads=4, d_ff=48, **extra)
    ).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    if cfg == "t5":  # relative position biases are not covered by the fixed-shape step
        assert model.step_spec() is None
        return
    src = torch.randint(3, V, (2, 9), generator=torch.Generator().manual_seed(1))
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0  # a shorter source (right padding in the encoder)
    start = torch.zeros(2, 1, dtype=torch.long)
    with torch.inference_mode(), decoding(model):
        memory = model.encode(src, src_mask)
        cache = model.new_cache()
        logits = model.decode(start, memory, src_mask, cache=cache)[:, -1]
        dec = StaticDecoder(model.step_spec())
        state = dec.load(cache, None, capacity=8, memory_mask=src_mask)
        tok, mask = logits.argmax(-1), torch.ones(2, 1, dtype=torch.bool)
        for i in range(6):
            if i == 2:
                cache.expand(3)
                state.expand(3)
                memory, src_mask = memory.repeat_interleave(3, 0), src_mask.repeat_interleave(3, 0)
                mask, tok = mask.repeat_interleave(3, 0), tok.repeat_interleave(3, 0)
            if i >= 3:
                # Within each source's rows (the encoder keys stay shared), then across sources.
                index = torch.tensor([2, 2, 0, 4, 3, 3] if i == 3 else [5, 0, 1, 2, 3, 4])
                cache.reorder(index)
                state.reorder(index)
                assert state.group == (3 if i == 3 else 1)
                memory, src_mask = memory.index_select(0, index), src_mask.index_select(0, index)
                mask, tok = mask.index_select(0, index), tok.index_select(0, index)
            positions = mask.sum(1, keepdim=True)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            want = model.decode(
                tok[:, None], memory, src_mask, attention_mask=mask, positions=positions, cache=cache
            )[:, -1]
            torch.testing.assert_close(dec.step(state, tok), want, atol=2e-5, rtol=1e-5)
            tok = want.argmax(-1)


def test_capacity_is_checked():
    model = _decoder("llama_gqa_rope")
    ids, mask = _batch()
    with torch.inference_mode(), decoding(model):
        cache = model.new_cache()
        model(ids, attention_mask=mask, positions=(mask.long().cumsum(1) - 1).clamp(min=0), cache=cache)
        dec = StaticDecoder(model.step_spec())
        with pytest.raises(ValueError, match="leaves no room"):
            dec.load(cache, mask, capacity=ids.shape[1])
        state = dec.load(cache, mask, capacity=ids.shape[1] + 1)
        dec.step(state, ids[:, 0])
        with pytest.raises(ValueError, match="static cache full"):
            dec.step(state, ids[:, 0])


def test_a_cached_decoder_is_reused_until_the_weights_change():
    from gensys.generate.stepper import static_decoder

    model = _decoder("gpt2_learned")
    with torch.inference_mode(), decoding(model):
        first = static_decoder(model)
        assert static_decoder(model) is first
    with torch.no_grad():
        model.blocks[0].mlp.up_proj.weight.add_(1.0)  # an in-place update bumps the version
    with torch.inference_mode(), decoding(model):
        second = static_decoder(model)
        assert second is not first
        w = second.layers[0].up[0]  # (in, out) packed copy of the new weight
        torch.testing.assert_close(w, model.blocks[0].mlp.up_proj.weight.t())


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_compiled_step_equals_the_eager_static_step():
    model = _decoder("llama_gqa_rope")
    ids, mask = _batch()
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode(), decoding(model):
        runs = []
        for compile in (False, True):
            cache = model.new_cache()
            logits = model(ids, attention_mask=mask, positions=positions, cache=cache)[:, -1]
            dec = StaticDecoder(model.step_spec(), compile=compile)
            runs.append((dec, dec.load(cache, mask, capacity=16)))
        tok = logits.argmax(-1)
        for i in range(6):
            if i == 2:  # new shapes mid-way: the state looks its compiled graph up again
                for _, state in runs:
                    state.expand(2)
                tok = tok.repeat_interleave(2)
            if i == 4:
                index = torch.tensor([1, 0, 2, 2, 5, 4])
                for _, state in runs:
                    state.reorder(index)
                tok = tok[index]
            eager, compiled = (dec.step(state, tok) for dec, state in runs)
            torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
            tok = eager.argmax(-1)


def test_a_deep_copied_model_builds_its_own_decoder():
    import copy

    from gensys.generate import GenerationConfig, generate

    model = _decoder("llama_gqa_rope")
    ids = torch.randint(3, V, (1, 5))
    generate(model, ids, config=GenerationConfig(max_new_tokens=3))  # caches a StaticDecoder on the model
    twin = copy.deepcopy(model)
    assert twin.__dict__.get("_gensys_static_decoder") is None
    with torch.no_grad():
        twin.lm_head.weight.mul_(-1.0)
    cfg = GenerationConfig(max_new_tokens=3)
    out_twin = generate(twin, ids, config=cfg, output_scores=True)
    ref_twin = generate(twin, ids, config=cfg.replace(decode_path="modules"), output_scores=True)
    torch.testing.assert_close(out_twin.scores[0], ref_twin.scores[0])


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_compiled_layouts_are_bounded_then_eager(monkeypatch):
    model = _decoder("llama_gqa_rope")
    ids, mask = _batch()
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    monkeypatch.setattr(StaticDecoder, "MAX_GRAPHS", 1)
    with torch.inference_mode(), decoding(model):
        cache = model.new_cache()
        logits = model(ids, attention_mask=mask, positions=positions, cache=cache)[:, -1]
        dec = StaticDecoder(model.step_spec(), compile=True)
        state = dec.load(cache, mask, capacity=16)
        eager_dec = StaticDecoder(model.step_spec(), compile=False)
        cache2 = model.new_cache()
        model(ids, attention_mask=mask, positions=positions, cache=cache2)
        ref = eager_dec.load(cache2, mask, capacity=16)
        tok = logits.argmax(-1)
        for i in range(3):
            if i == 1:  # a second layout: over the limit of one, so it runs eagerly
                state.expand(2)
                ref.expand(2)
                tok = tok.repeat_interleave(2)
            got, want = dec.step(state, tok), eager_dec.step(ref, tok)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            tok = want.argmax(-1)
        assert len(dec._graphs) == 1
