"""The decoding fast path (packed transposed weights, one-query GQA attention, double-buffered cache reorder)
gives what the ordinary modules give, and only applies where it should."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gensys.models.decoder_lm import DecoderLM, llama_config
from gensys.models.seq2seq import Seq2Seq, marian_config
from gensys.nn.attention import Attention, attend_math, attend_one_query
from gensys.nn.cache import KVCache
from gensys.nn.layers import DECODE_MAX_ROWS, decoding, packed_linear
from gensys.nn.positions import RotaryEmbedding


def _linears() -> tuple[nn.Module, nn.Linear, nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    owner = nn.Module()
    owner.a, owner.b, owner.c = nn.Linear(16, 8), nn.Linear(16, 4, bias=False), nn.Linear(16, 6)
    return owner, owner.a, owner.b, owner.c


def test_packed_linear_equals_the_concatenated_linears_and_only_applies_inside_decoding():
    owner, a, b, c = _linears()
    x = torch.randn(3, 1, 16)
    ref = torch.cat([a(x), b(x), c(x)], dim=-1).detach()  # (3, 1, 18); b has no bias
    with torch.no_grad():
        assert packed_linear(x, owner, "abc", (a, b, c)) is None  # outside `decoding`
    with decoding(owner):
        assert packed_linear(x, owner, "abc", (a, b, c)) is None  # gradients on
        with torch.no_grad():
            out = packed_linear(x, owner, "abc", (a, b, c))
            torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
            many = torch.randn(DECODE_MAX_ROWS + 1, 16)  # a prefill-sized input keeps nn.Linear
            assert packed_linear(many, owner, "abc", (a, b, c)) is None

            class Scaled(nn.Linear):
                pass

            assert packed_linear(x, owner, "other", (Scaled(16, 4),)) is None  # not a plain Linear
    with torch.no_grad():
        assert packed_linear(x, owner, "abc", (a, b, c)) is None  # off again after the block


def test_packed_weights_are_dropped_when_the_weights_changed_between_decoding_blocks():
    owner, a, b, c = _linears()
    x = torch.randn(2, 16)
    with torch.no_grad():
        with decoding(owner):
            packed_linear(x, owner, "abc", (a, b, c))
        a.weight.mul_(2.0)  # e.g. an optimizer step between two generate calls
        c.load_state_dict({"weight": torch.zeros(6, 16), "bias": torch.ones(6)})
        with decoding(owner):
            out = packed_linear(x, owner, "abc", (a, b, c))
        torch.testing.assert_close(out, torch.cat([a(x), b(x), c(x)], dim=-1), atol=1e-6, rtol=1e-5)
        owner.b = b = nn.Linear(16, 4, bias=False)  # a replaced submodule
        with decoding(owner):
            out = packed_linear(x, owner, "abc", (a, b, c))
        torch.testing.assert_close(out, torch.cat([a(x), b(x), c(x)], dim=-1), atol=1e-6, rtol=1e-5)


def test_packed_weights_see_a_fused_optimizer_step_of_build_optimizer():
    # Fused AdamW writes parameters without bumping their versions; build_optimizer's hook bumps them, or
    # generation during training would keep decoding with the weights of its first call (found 2026-11-28:
    # the captioner's in-training CIDEr fell while its real CIDEr rose).
    from gensys.train.config import TrainConfig
    from gensys.train.optim import build_optimizer

    owner, a, b, c = _linears()
    x = torch.randn(2, 16)
    opt = build_optimizer(owner, TrainConfig(lr=0.1))
    assert opt.defaults.get("fused")
    with torch.no_grad(), decoding(owner):
        packed_linear(x, owner, "abc", (a, b, c))
    owner.a(x).sum().backward()
    before = a.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, a.weight)
    with torch.no_grad(), decoding(owner):
        out = packed_linear(x, owner, "abc", (a, b, c))
        torch.testing.assert_close(out, torch.cat([a(x), b(x), c(x)], dim=-1), atol=1e-6, rtol=1e-5)


def test_attend_one_query_equals_the_explicit_path_with_repeated_kv_heads():
    torch.manual_seed(1)
    for h_kv in (1, 2, 8):
        q = torch.randn(3, 8, 1, 16)
        k, v = torch.randn(3, h_kv, 7, 16), torch.randn(3, h_kv, 7, 16)
        for scale in (None, 1.0):
            ref = attend_math(q, k, v, scale=scale)
            torch.testing.assert_close(attend_one_query(q, k, v, scale=scale), ref, atol=1e-6, rtol=1e-5)


def test_cached_gqa_rope_decoding_inside_decoding_equals_the_full_pass():
    """Prefill + one-token steps (packed q|k|v, joint q/k rotary, grouped attention) vs one full pass."""
    torch.manual_seed(2)
    attn = Attention(32, 4, n_kv_heads=2, bias=True).eval()
    rope = RotaryEmbedding(8)
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        full = attn(x, is_causal=True, rope=rope(torch.arange(7)))
        cache = KVCache(1, initial_capacity=2)
        with decoding(attn):
            steps = [attn(x[:, :3], cache=cache, is_causal=True, rope=rope(torch.arange(3)))]
            for t in range(3, 7):
                steps.append(attn(x[:, t : t + 1], cache=cache, rope=rope(torch.tensor([t]))))
            assert "qkv" in attn.__dict__["_gensys_packed"]  # the fast path really ran
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_reorder_into_spare_buffers_equals_index_select_of_the_history():
    torch.manual_seed(3)
    cache = KVCache(2, initial_capacity=4)
    hist_k = [torch.empty(4, 2, 0, 8) for _ in range(2)]  # reference: plain concatenated history
    hist_v = [torch.empty(4, 2, 0, 8) for _ in range(2)]
    for _ in range(9):  # crosses the capacity doubling (4 -> 8 -> 16)
        for layer in range(2):
            k, v = torch.randn(4, 2, 1, 8), torch.randn(4, 2, 1, 8)
            hist_k[layer] = torch.cat([hist_k[layer], k], dim=2)
            hist_v[layer] = torch.cat([hist_v[layer], v], dim=2)
            got_k, got_v = cache.update(layer, k, v)
            torch.testing.assert_close(got_k, hist_k[layer], atol=0, rtol=0)
            torch.testing.assert_close(got_v, hist_v[layer], atol=0, rtol=0)
        index = torch.randint(0, 4, (4,))
        cache.reorder(index)
        hist_k = [h.index_select(0, index) for h in hist_k]
        hist_v = [h.index_select(0, index) for h in hist_v]
    cache.expand(2)  # a new row count: spare buffers of the old shape must not be reused
    cache.reorder(torch.arange(8).flip(0))
    k, v = cache.update(0, torch.zeros(8, 2, 1, 8), torch.zeros(8, 2, 1, 8))
    ref = hist_k[0].repeat_interleave(2, dim=0).flip(0)
    torch.testing.assert_close(k[:, :, :-1], ref, atol=0, rtol=0)


def _step_logits(model: nn.Module, ids: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
    cache = model.new_cache()
    out = []
    if memory is None:
        model(ids[:, :3], cache=cache)
        for t in range(3, ids.shape[1]):
            out.append(model(ids[:, t : t + 1], cache=cache))
    else:
        model.decode(ids[:, :3], memory, cache=cache)
        for t in range(3, ids.shape[1]):
            out.append(model.decode(ids[:, t : t + 1], memory, cache=cache))
    return torch.cat(out, dim=1)  # (B, T - 3, V)


def test_model_decoding_steps_are_the_same_inside_and_outside_decoding():
    """Llama (GQA, RoPE, RMSNorm, SwiGLU, untied head) and Marian (cross-attention, biased tied head)."""
    torch.manual_seed(4)
    lm = DecoderLM(
        llama_config(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48)
    ).eval()
    s2s = Seq2Seq(
        marian_config(
            vocab_size=50, d_model=32, n_heads=4, d_ff=48, n_enc_layers=1, n_dec_layers=2, lm_head_bias=True
        )
    ).eval()
    ids = torch.randint(0, 50, (3, 8))
    with torch.no_grad():
        memory = s2s.encode(torch.randint(0, 50, (3, 5)))
        for model, mem in ((lm, None), (s2s, memory)):
            plain = _step_logits(model, ids, mem)
            with decoding(model):
                fast = _step_logits(model, ids, mem)
            torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
        assert "lm_head" in s2s.__dict__["_gensys_packed"]


def test_stacked_left_padded_caches_decode_like_each_row_alone():
    """Drafts prefilled one at a time (different lengths), stacked, then decoded together = each alone."""
    from gensys.nn.cache import stack_left_padded

    torch.manual_seed(4)
    model = DecoderLM(llama_config(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64))
    model.eval()
    prompts = [torch.randint(0, 50, (1, n)) for n in (5, 9, 2)]
    nxt = torch.randint(0, 50, (3, 3))  # three more tokens per row
    with torch.no_grad():
        caches = []
        for p in prompts:
            caches.append(model.new_cache())
            model(p, cache=caches[-1])
        lengths = [c.length for c in caches]
        stacked, mask = stack_left_padded(caches, capacity=1)  # capacity 1 < 3 steps: regrowth is exercised
        assert [c.length for c in caches] == lengths  # the inputs are untouched
        assert mask.tolist()[2] == [False] * 7 + [True] * 2
        got = []
        for t in range(3):
            mask = torch.cat([mask, mask.new_ones(3, 1)], 1)
            pos = torch.tensor([[n + t] for n in lengths])
            got.append(model(nxt[:, t : t + 1], attention_mask=mask, positions=pos, cache=stacked)[:, -1])
        for row, p in enumerate(prompts):
            full = model(torch.cat([p, nxt[row : row + 1]], 1))[0, -3:]  # (3, V)
            torch.testing.assert_close(torch.stack([g[row] for g in got]), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one row each"):
        stack_left_padded([model.new_cache()])


@pytest.mark.parametrize("n_kv_heads", [4, 2])
@pytest.mark.parametrize("t", [1, 3])
def test_shared_prefix_attention_equals_attention_over_repeated_keys(n_kv_heads, t):
    """attend_with_prefix = SDPA over cat(prefix repeated per row, own keys), with padding and causality."""
    from gensys.nn.attention import attend_with_prefix, build_self_mask

    torch.manual_seed(5)
    b, n, h, d, lp, ts = 2, 3, 4, 8, 6, 4
    q = torch.randn(b * n, h, t, d)
    k, v = torch.randn(b * n, n_kv_heads, ts, d), torch.randn(b * n, n_kv_heads, ts, d)
    pk, pv = torch.randn(b, n_kv_heads, lp, d), torch.randn(b, n_kv_heads, lp, d)
    key_mask = torch.ones(b * n, lp + ts, dtype=torch.bool)
    key_mask[3:, :2] = False  # the second prompt is left-padded by two positions
    mask, _ = build_self_mask(key_mask, t, lp + ts, causal=True)
    full_k = torch.cat([pk.repeat_interleave(n, 0), k], 2)
    full_v = torch.cat([pv.repeat_interleave(n, 0), v], 2)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, full_k, full_v, attn_mask=mask, enable_gqa=n_kv_heads != h
    )
    got = attend_with_prefix(q, k, v, (pk, pv), mask=mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_kv_cache_shared_prefix_bookkeeping():
    """expand(share_prefix) keeps one prompt copy: length, crop, nbytes, reorder and a second expand."""
    torch.manual_seed(6)
    model = DecoderLM(llama_config(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64))
    model.eval()
    prompt, steps = torch.randint(0, 40, (2, 5)), torch.randint(0, 40, (6, 2))
    with torch.no_grad():
        shared, plain = model.new_cache(), model.new_cache()
        model(prompt, cache=shared)
        model(prompt, cache=plain)
        before = shared.nbytes()
        shared.expand(3, share_prefix=True)
        plain.expand(3)
        assert shared.length == plain.length == 5 and shared.prefix_length == 5
        assert shared.nbytes() == before  # the prompt is not copied per row
        order = torch.tensor([2, 0, 1, 3, 3, 5])  # beam search reorders within each prompt's rows
        for t in range(2):
            a = model(steps[:, t : t + 1], cache=shared)
            c = model(steps[:, t : t + 1], cache=plain)
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
            shared.reorder(order)
            plain.reorder(order)
        assert shared.length == 7
        shared.crop(6)
        assert shared.length == 6
        with pytest.raises(ValueError, match="inside a shared prefix"):
            shared.crop(4)
        with pytest.raises(ValueError, match="already shares a prefix"):
            shared.expand(2, share_prefix=True)
