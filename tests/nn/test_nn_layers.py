"""Norms, feed-forward activations and the block (pre-/post-norm) against torch's own transformer layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gensys.nn.attention import build_cross_mask, build_self_mask
from gensys.nn.block import Stack, TransformerBlock
from gensys.nn.layers import MLP, RMSNorm, make_norm


def test_rmsnorm_hand_case_and_torch_reference():
    norm = RMSNorm(2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
    out = norm(torch.tensor([[3.0, 4.0]]))
    rms = math.sqrt((9 + 16) / 2)
    torch.testing.assert_close(out, torch.tensor([[3 / rms, 8 / rms]]))

    x = torch.randn(3, 5, 16)
    ours = RMSNorm(16, eps=1e-6)
    ref = nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x))
    with pytest.raises(ValueError):
        make_norm("batchnorm", 4, 1e-5)


@pytest.mark.parametrize(
    "activation, formula",
    [
        ("relu", lambda g, u: F.relu(u)),
        ("gelu", lambda g, u: 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))),
        (
            "gelu_tanh",
            lambda g, u: 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3))),
        ),
        ("silu", lambda g, u: u * torch.sigmoid(u)),
        ("swiglu", lambda g, u: g * torch.sigmoid(g) * u),
        (
            "geglu",
            lambda g, u: 0.5 * g * (1 + torch.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3))) * u,
        ),
    ],
)
def test_mlp_activations_match_their_formulas(activation, formula):
    torch.manual_seed(0)
    mlp = MLP(8, 16, activation)
    assert (mlp.gate_proj is not None) == (activation in ("swiglu", "geglu"))
    x = torch.randn(2, 3, 8)
    u = mlp.up_proj(x)
    g = mlp.gate_proj(x) if mlp.gate_proj is not None else None
    torch.testing.assert_close(mlp(x), mlp.down_proj(formula(g, u)), atol=1e-6, rtol=1e-5)


def _copy_attn(ours, theirs: nn.MultiheadAttention) -> None:
    d = theirs.embed_dim
    w, b = theirs.in_proj_weight, theirs.in_proj_bias
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        getattr(ours, name).weight.copy_(w[i * d : (i + 1) * d])
        getattr(ours, name).bias.copy_(b[i * d : (i + 1) * d])
    ours.o_proj.weight.copy_(theirs.out_proj.weight)
    ours.o_proj.bias.copy_(theirs.out_proj.bias)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_block_equals_torch_transformer_encoder_layer(pre_norm):
    """Post-norm is the original transformer / seed-notes block; pre-norm is GPT-2's."""
    torch.manual_seed(1)
    ref = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=pre_norm).eval()
    block = TransformerBlock(16, 4, 32, activation="relu", pre_norm=pre_norm).eval()
    with torch.no_grad():
        _copy_attn(block.attn, ref.self_attn)
        block.mlp.up_proj.load_state_dict(ref.linear1.state_dict())
        block.mlp.down_proj.load_state_dict(ref.linear2.state_dict())
        block.attn_norm.load_state_dict(ref.norm1.state_dict())
        block.mlp_norm.load_state_dict(ref.norm2.state_dict())
    x = torch.randn(2, 5, 16)
    pad = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask, _ = build_self_mask(pad, 5, 5, causal=False)
    out = block(x, mask=mask)
    expected = ref(x, src_key_padding_mask=~pad.bool())
    torch.testing.assert_close(out[pad.bool()], expected[pad.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_block_equals_torch_transformer_decoder_layer(pre_norm):
    torch.manual_seed(2)
    ref = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=pre_norm).eval()
    block = TransformerBlock(16, 4, 32, activation="relu", pre_norm=pre_norm, cross_attention=True).eval()
    with torch.no_grad():
        _copy_attn(block.attn, ref.self_attn)
        _copy_attn(block.cross_attn, ref.multihead_attn)
        block.mlp.up_proj.load_state_dict(ref.linear1.state_dict())
        block.mlp.down_proj.load_state_dict(ref.linear2.state_dict())
        block.attn_norm.load_state_dict(ref.norm1.state_dict())
        block.cross_norm.load_state_dict(ref.norm2.state_dict())
        block.mlp_norm.load_state_dict(ref.norm3.state_dict())
    x, mem = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    mem_pad = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    out = block(x, is_causal=True, memory=mem, memory_mask=build_cross_mask(mem_pad))
    causal = nn.Transformer.generate_square_subsequent_mask(4)
    expected = ref(x, mem, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~mem_pad.bool())
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_stack_final_norm_and_checkpointable_blocks():
    torch.manual_seed(3)
    stack = Stack(2, nn.LayerNorm(16), dim=16, n_heads=4, d_ff=32)
    assert isinstance(stack.blocks, nn.ModuleList)
    x = torch.randn(2, 5, 16, requires_grad=True)
    out = stack(x, is_causal=True)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)  # ends with LayerNorm
    # blocks take (x, **tensors) so activation checkpointing can wrap them unchanged
    from torch.utils.checkpoint import checkpoint

    h = x
    for block in stack.blocks:
        h = checkpoint(block, h, is_causal=True, use_reentrant=False)
    torch.testing.assert_close(stack.norm(h), out)
    stack.norm(h).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
