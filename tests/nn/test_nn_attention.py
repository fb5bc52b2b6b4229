"""Attention: parity with torch.nn.MultiheadAttention, GQA, hand-made masks, SDPA vs explicit path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gensys.nn.attention import Attention, attend_math, build_cross_mask, build_self_mask
from gensys.nn.cache import KVCache

D, H = 32, 4


def _torch_mha_from(attn: Attention) -> nn.MultiheadAttention:
    """torch's MHA carrying our attention's weights (packed in_proj when q/k/v share the input size)."""
    kdim = attn.k_proj.in_features
    mha = nn.MultiheadAttention(D, H, batch_first=True, kdim=kdim, vdim=kdim).eval()
    with torch.no_grad():
        if kdim == D:
            mha.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        else:
            mha.q_proj_weight.copy_(attn.q_proj.weight)
            mha.k_proj_weight.copy_(attn.k_proj.weight)
            mha.v_proj_weight.copy_(attn.v_proj.weight)
        mha.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        mha.out_proj.weight.copy_(attn.o_proj.weight)
        mha.out_proj.bias.copy_(attn.o_proj.bias)
    return mha


def test_self_attention_equals_torch_mha_with_causal_and_padding_masks():
    torch.manual_seed(0)
    attn = Attention(D, H).eval()
    mha = _torch_mha_from(attn)
    x = torch.randn(3, 6, D)
    key_mask = torch.ones(3, 6, dtype=torch.bool)
    key_mask[0, :2] = False  # left padding
    key_mask[2, 5:] = False  # right padding

    # no mask at all
    ref, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(attn(x), ref, atol=1e-6, rtol=1e-5)

    # causal only: our is_causal fast path
    mask, is_causal = build_self_mask(None, 6, 6, causal=True)
    assert mask is None and is_causal
    causal_float = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)  # torch: True = masked
    ref, _ = mha(x, x, x, attn_mask=causal_float, need_weights=False)
    torch.testing.assert_close(attn(x, is_causal=True), ref, atol=1e-6, rtol=1e-5)

    # padding (bidirectional): torch's key_padding_mask uses True = pad
    mask, is_causal = build_self_mask(key_mask, 6, 6, causal=False)
    ref, _ = mha(x, x, x, key_padding_mask=~key_mask, need_weights=False)
    out = attn(x, mask=mask, is_causal=is_causal)
    torch.testing.assert_close(out[key_mask], ref[key_mask], atol=1e-6, rtol=1e-5)

    # causal + padding; compare real query rows (torch leaves fully masked rows NaN)
    mask, is_causal = build_self_mask(key_mask, 6, 6, causal=True)
    ref, _ = mha(x, x, x, attn_mask=causal_float, key_padding_mask=~key_mask, need_weights=False)
    out = attn(x, mask=mask, is_causal=is_causal)
    torch.testing.assert_close(out[key_mask], ref[key_mask], atol=1e-6, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_cross_attention_equals_torch_mha_with_other_memory_width():
    torch.manual_seed(1)
    attn = Attention(D, H, kv_dim=24).eval()
    mha = _torch_mha_from(attn)
    x, mem = torch.randn(2, 5, D), torch.randn(2, 7, 24)
    mem_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    ref, _ = mha(x, mem, mem, key_padding_mask=~mem_mask.bool(), need_weights=False)
    out = attn(x, memory=mem, mask=build_cross_mask(mem_mask))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def _grouped_copy(gqa: Attention, n_kv: int) -> Attention:
    """A plain MHA whose k/v heads are the GQA heads repeated per group: must compute the same thing."""
    hd = gqa.head_dim
    mha = Attention(D, H).eval()
    rep = H // n_kv
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("k_proj", "v_proj"):
            src = getattr(gqa, name)
            w = src.weight.view(n_kv, hd, D).repeat_interleave(rep, 0).reshape(H * hd, D)
            b = src.bias.view(n_kv, hd).repeat_interleave(rep, 0).reshape(H * hd)
            getattr(mha, name).weight.copy_(w)
            getattr(mha, name).bias.copy_(b)
    return mha


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_grouped_query_attention_equals_mha_with_repeated_kv_heads(n_kv):
    torch.manual_seed(2)
    gqa = Attention(D, H, n_kv_heads=n_kv).eval()
    assert gqa.k_proj.out_features == n_kv * gqa.head_dim
    mha = _grouped_copy(gqa, n_kv)
    if n_kv == H:  # n_kv_heads = n_heads is plain MHA: identical weights, identical module
        assert all(torch.equal(a, b) for a, b in zip(gqa.state_dict().values(), mha.state_dict().values()))
    x = torch.randn(2, 6, D)
    key_mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6])
    mask, _ = build_self_mask(key_mask, 6, 6, causal=True)
    torch.testing.assert_close(gqa(x, mask=mask), mha(x, mask=mask), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gqa(x, is_causal=True), mha(x, is_causal=True), atol=1e-6, rtol=1e-5)
    # explicit path too (an all-zero bias forces it)
    zero = torch.zeros(1, H, 6, 6)
    torch.testing.assert_close(gqa(x, mask=mask, bias=zero), mha(x, mask=mask), atol=1e-6, rtol=1e-5)


def test_build_self_mask_hand_made_cases():
    # training, no padding: SDPA's causal fast path, no tensor
    assert build_self_mask(None, 4, 4, causal=True) == (None, True)
    # encoder, no padding: nothing to mask
    assert build_self_mask(None, 4, 4, causal=False) == (None, False)
    # one new token after 3 cached: sees everything
    assert build_self_mask(None, 1, 4, causal=True) == (None, False)
    # an all-ones padding mask masks nothing
    assert build_self_mask(torch.ones(2, 4), 4, 4, causal=True) == (None, True)

    # two new tokens after two cached ones: causal with an offset
    mask, is_causal = build_self_mask(None, 2, 4, causal=True)
    assert not is_causal
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)

    # left padding (row 0 has one pad), causal, no cache
    key_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    mask, is_causal = build_self_mask(key_mask, 3, 3, causal=True)
    assert not is_causal and mask.shape == (2, 1, 3, 3)
    row0 = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1]], dtype=torch.bool)  # pad query sees only itself
    row1 = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], row0) and torch.equal(mask[1, 0], row1)

    # decoding step with padding: one query, the pad key hidden
    mask, _ = build_self_mask(torch.tensor([[0, 1, 1, 1]]), 1, 4, causal=True)
    assert torch.equal(mask[0, 0], torch.tensor([[0, 1, 1, 1]], dtype=torch.bool))

    with pytest.raises(ValueError, match="expected cached"):
        build_self_mask(torch.ones(1, 2), 2, 5, causal=True)  # mask of the new tokens only

    cross = build_cross_mask(torch.tensor([[1, 1, 0]]))
    assert cross.shape == (1, 1, 1, 3) and torch.equal(cross[0, 0, 0], torch.tensor([True, True, False]))
    assert build_cross_mask(torch.ones(1, 3)) is None


def test_masked_keys_do_not_influence_the_output():
    torch.manual_seed(3)
    attn = Attention(D, H).eval()
    x = torch.randn(1, 5, D)
    key_mask = torch.tensor([[0, 0, 1, 1, 1]])
    mask, _ = build_self_mask(key_mask, 5, 5, causal=True)
    y = x.clone()
    y[0, :2] = torch.randn(2, D) * 100  # change only the padded positions
    out_x, out_y = attn(x, mask=mask), attn(y, mask=mask)
    torch.testing.assert_close(out_x[0, 2:], out_y[0, 2:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out_x[0, :2], out_y[0, :2])


def test_sdpa_path_equals_explicit_path():
    torch.manual_seed(4)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    mask = torch.rand(2, 1, 5, 7) > 0.3
    mask[..., 0] = True
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(attend_math(q, k, v, mask=mask), ref, atol=1e-6, rtol=1e-5)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True, scale=1.0)
    torch.testing.assert_close(attend_math(q, k, v, mask=mask, scale=1.0), ref, atol=1e-6, rtol=1e-5)
    # an additive bias equals SDPA with a float mask
    bias = torch.randn(1, 4, 5, 7)
    float_mask = bias.masked_fill(~mask, float("-inf"))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask, enable_gqa=True)
    torch.testing.assert_close(attend_math(q, k, v, mask=mask, bias=bias), ref, atol=1e-6, rtol=1e-5)
    # causal with more keys than queries: bottom-right aligned (queries are the last positions)
    out = attend_math(q, k, v, is_causal=True)
    offset_mask = torch.ones(5, 7, dtype=torch.bool).tril(2)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=offset_mask, enable_gqa=True)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_kv_cache_incremental_equals_full_and_cross_cache_is_computed_once():
    torch.manual_seed(5)
    attn = Attention(D, H, n_kv_heads=2).eval()
    x = torch.randn(2, 6, D)
    full = attn(x, is_causal=True)
    cache = KVCache(1, initial_capacity=2)  # small capacity: exercises the buffer growth
    steps = [attn(x[:, :3], cache=cache, is_causal=True)]
    for t in range(3, 6):
        steps.append(attn(x[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=1e-5)
    assert cache.length == 6

    cross = Attention(D, H).eval()
    mem = torch.randn(2, 4, D)
    cache = KVCache(1)
    first = cross(x[:, :1], memory=mem, cache=cache)
    again = cross(x[:, :1], memory=torch.zeros_like(mem), cache=cache)  # cached K/V win over new memory
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first, cross(x[:, :1], memory=mem))


def test_head_count_follows_projection_size_for_tensor_parallel_shards():
    """Splitting q/k/v by heads (columns) and o by rows gives two partial outputs that sum to the full one."""
    torch.manual_seed(6)
    full = Attention(D, H, n_kv_heads=2, bias=False).eval()
    hd = full.head_dim
    x = torch.randn(2, 5, D)
    parts = []
    for r in range(2):
        shard = Attention(D, H, n_kv_heads=2, bias=False).eval()
        q_rows = slice(r * H // 2 * hd, (r + 1) * H // 2 * hd)
        kv_rows = slice(r * hd, (r + 1) * hd)
        with torch.no_grad():
            shard.q_proj = nn.Linear(D, H // 2 * hd, bias=False)
            shard.q_proj.weight.copy_(full.q_proj.weight[q_rows])
            shard.k_proj = nn.Linear(D, hd, bias=False)
            shard.k_proj.weight.copy_(full.k_proj.weight[kv_rows])
            shard.v_proj = nn.Linear(D, hd, bias=False)
            shard.v_proj.weight.copy_(full.v_proj.weight[kv_rows])
            shard.o_proj = nn.Linear(H // 2 * hd, D, bias=False)
            shard.o_proj.weight.copy_(full.o_proj.weight[:, q_rows])
        parts.append(shard(x, is_causal=True))
    torch.testing.assert_close(parts[0] + parts[1], full(x, is_causal=True), atol=1e-6, rtol=1e-5)
