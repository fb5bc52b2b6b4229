"""Positional encodings: hand-made values, HF references (Llama RoPE, T5 buckets), beyond-length use."""

from __future__ import annotations

import math

import pytest
import torch

from gensys.nn.positions import (
    Learned2DPositions,
    LearnedPositions,
    RelativePositionBias,
    RotaryEmbedding,
    apply_rotary,
    interpolate_grid,
    positions_from_mask,
    relative_bucket,
    sinusoidal,
    sinusoidal_2d,
)


def test_positions_from_mask_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert positions_from_mask(mask, 5).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert positions_from_mask(mask, 2).tolist() == [[1, 2], [3, 4]]  # the last two tokens only


def test_sinusoidal_hand_values_and_beyond_any_length():
    pe = sinusoidal(torch.tensor([0, 1, 2]), 4)  # freqs 1 and 1/100
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],
            [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)],
            [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)],
        ]
    )
    torch.testing.assert_close(pe, expected)
    far = sinusoidal(torch.tensor([50_000]), 8)  # no table, no length limit
    assert torch.isfinite(far).all()
    torch.testing.assert_close(far[0, 0], torch.tensor(math.sin(50_000.0)))
    with pytest.raises(ValueError):
        sinusoidal(torch.tensor([0]), 5)


def test_learned_positions_stop_at_the_table_size():
    lp = LearnedPositions(8, 4)
    assert lp(torch.tensor([[0, 7]])).shape == (1, 2, 4)
    with pytest.raises(IndexError):
        lp(torch.tensor([[8]]))


def test_rope_equals_hf_llama_rotary():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(
        hidden_size=64, num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 500.0}
    )
    hf_rope = LlamaRotaryEmbedding(cfg)
    ours = RotaryEmbedding(16, theta=500.0)
    q, k = torch.randn(2, 4, 6, 16), torch.randn(2, 2, 6, 16)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])
    cos_hf, sin_hf = hf_rope(q, pos)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos_hf, sin_hf)
    cos, sin = ours(pos)
    torch.testing.assert_close(apply_rotary(q, cos, sin), q_hf)
    torch.testing.assert_close(apply_rotary(k, cos, sin), k_hf)


def test_rope_scores_depend_only_on_relative_distance_and_preserve_norms():
    rope = RotaryEmbedding(8, theta=10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> torch.Tensor:
        cq, sq = rope(torch.tensor([[m]]))
        ck, sk = rope(torch.tensor([[n]]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(3, 1), score(103, 101), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(score(7, 7), (q * k).sum(), atol=1e-5, rtol=1e-5)
    cos, sin = rope(torch.tensor([[12345]]))  # far beyond any training length
    torch.testing.assert_close(apply_rotary(q, cos, sin).norm(), q.norm())


def test_rope_hand_rotation_theta_and_partial_rotary():
    # head_dim 4, theta 100: pairs (0, 2) turn by p * 1 rad, (1, 3) by p * 100^(-1/2) = p / 10 rad
    rope = RotaryEmbedding(4, theta=100.0)
    x = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    cos, sin = rope(torch.tensor([[2]]))
    out = apply_rotary(x, cos, sin).flatten()
    torch.testing.assert_close(out, torch.tensor([math.cos(2), math.cos(0.2), math.sin(2), math.sin(0.2)]))

    partial = RotaryEmbedding(8, fraction=0.5)
    assert partial.rot_dim == 4
    x = torch.randn(1, 2, 3, 8)
    cos, sin = partial(torch.tensor([[5, 6, 7]]))
    out = apply_rotary(x, cos, sin)
    assert torch.equal(out[..., 4:], x[..., 4:])  # pass-through dims untouched
    full4 = RotaryEmbedding(4)
    c4, s4 = full4(torch.tensor([[5, 6, 7]]))
    torch.testing.assert_close(out[..., :4], apply_rotary(x[..., :4], c4, s4))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_equal_hf_t5(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)[None, :]
    ours = relative_bucket(rel, bidirectional, 32, 128)
    ref = T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=32, max_distance=128
    )
    assert torch.equal(ours, ref)


def test_relative_buckets_hand_values():
    rel = torch.tensor([0, -1, 1, -7, -1000, 1000])
    # bidirectional, 32 buckets: 16 per side, the first 8 exact; far distances share the last bucket
    assert relative_bucket(rel, True, 32, 128).tolist() == [0, 1, 17, 7, 15, 31]
    # causal: future keys fold into bucket 0, all 32 buckets for the past
    assert relative_bucket(rel, False, 32, 128).tolist() == [0, 1, 0, 7, 31, 0]


def test_relative_bias_with_offset_is_a_slice_of_the_full_table():
    bias = RelativePositionBias(n_heads=3, n_buckets=8, max_distance=20, bidirectional=False)
    full = bias(6, 6)
    assert full.shape == (1, 3, 6, 6)
    torch.testing.assert_close(bias(2, 6, q_offset=4), full[:, :, 4:])
    assert torch.isfinite(bias(1, 5000, q_offset=4999)).all()  # any length


def test_sinusoidal_2d_rows_and_columns():
    h, w, dim = 2, 3, 8
    pe = sinusoidal_2d(h, w, dim)
    assert pe.shape == (6, 8)
    for r in range(h):
        for c in range(w):
            cell = pe[r * w + c]
            torch.testing.assert_close(cell[:4], sinusoidal(torch.tensor(r), 4))
            torch.testing.assert_close(cell[4:], sinusoidal(torch.tensor(c), 4))


def test_learned_2d_positions_share_row_and_column_halves():
    lp = Learned2DPositions(4, 5, 6)
    pe = lp(3, 4)
    assert pe.shape == (12, 6)
    grid = pe.view(3, 4, 6)
    assert torch.equal(grid[1, 0, :3], grid[1, 3, :3])  # same row, same row half
    assert torch.equal(grid[0, 2, 3:], grid[2, 2, 3:])  # same column, same column half
    assert not torch.equal(grid[0, 0, :3], grid[1, 0, :3])


def test_interpolate_grid_identity_and_constant():
    table = torch.randn(16, 4)
    assert interpolate_grid(table, 4, 4) is table
    const = torch.ones(16, 4) * 3.0
    torch.testing.assert_close(interpolate_grid(const, 6, 5), torch.ones(30, 4) * 3.0)
    with pytest.raises(ValueError):
        interpolate_grid(torch.randn(15, 4), 3, 3)
