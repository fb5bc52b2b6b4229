"""Positional encodings.

Sequences:
- `sinusoidal(positions, dim)`: fixed sin/cos features, computed for any position (no length limit).
- `LearnedPositions`: a table of `max_len` learned vectors (GPT-2, BART); cannot go beyond `max_len`.
- `RelativePositionBias`: T5's bucketed per-head bias added to attention scores; log-spaced buckets make it
  usable at any length.
- `RotaryEmbedding` + `apply_rotary`: RoPE, rotating query/key pairs by position-dependent angles (any
  length).

Images (a grid of h x w patches, flattened row-major):
- ViT-style 1D learned vectors live in `gensys.nn.vision.ViTEncoder` (`interpolate_grid` resizes them).
- `sinusoidal_2d(h, w, dim)`: half the channels encode the row, half the column (any grid size).
- `Learned2DPositions`: learned row and column tables, concatenated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def positions_from_mask(attention_mask: Tensor, q_len: int) -> Tensor:
    """Positions (B, q_len) of the last `q_len` tokens given a (B, T_all) mask with 1 = real token.

    Left padding shifts each row so its first real token gets position 0; padded slots get 0 (they are masked
    out of attention anyway). This is what makes a row's result independent of the other rows' padding.
    """
    pos = attention_mask.long().cumsum(-1) - 1  # (B, T_all)
    return pos[:, -q_len:].clamp_min(0)


# ---------------------------------------------------------------------------------------------------------
# fixed sinusoidal


def sinusoidal(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Sin/cos features (..., dim) for integer `positions` (...): `[sin(p * w_i) | cos(p * w_i)]`.

    w_i = base^(-2i/dim) for i < dim/2. The sin half comes first, the cos half second (Marian's layout; the
    original paper interleaves them, which is the same features in another order). Angles are formed in
    float64 so positions in the thousands keep full float32 accuracy.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
    half = dim // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64, device=positions.device) * 2 / dim)
    angles = positions.to(torch.float64)[..., None] * freqs  # (..., dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


class LearnedPositions(nn.Module):
    """A learned vector per absolute position 0..max_len-1 (positions beyond the table are an error)."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_len, dim)

    def forward(self, positions: Tensor) -> Tensor:
        return self.emb(positions)


# ---------------------------------------------------------------------------------------------------------
# relative position bias (T5)


def relative_bucket(rel: Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> Tensor:
    """Map relative distances `key_pos - query_pos` to bucket ids in [0, n_buckets).

    Half the buckets (per direction when bidirectional) hold exact small distances; the rest cover distances
    up to `max_distance` on a log scale, and everything farther shares the last bucket, so any length works.
    """
    buckets = torch.zeros_like(rel)
    if bidirectional:
        n_buckets //= 2
        buckets = buckets + (rel > 0).long() * n_buckets  # keys to the right use the upper half
        dist = rel.abs()
    else:
        dist = (-rel).clamp_min(0)  # only the past counts; future keys are masked anyway
    n_exact = n_buckets // 2
    # log-spaced buckets for n_exact <= dist < max_distance
    far = (
        n_exact
        + (
            torch.log(dist.float().clamp_min(1) / n_exact)
            / math.log(max_distance / n_exact)
            * (n_buckets - n_exact)
        ).long()
    )
    far = far.clamp_max(n_buckets - 1)
    return buckets + torch.where(dist < n_exact, dist, far)


class RelativePositionBias(nn.Module):
    """T5-style learned bias per (bucketed relative distance, head), shared by every layer of a stack."""

    def __init__(
        self, n_heads: int, n_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
    ):
        super().__init__()
        self.n_buckets, self.max_distance, self.bidirectional = n_buckets, max_distance, bidirectional
        self.emb = nn.Embedding(n_buckets, n_heads)

    def forward(self, q_len: int, k_len: int, q_offset: int = 0) -> Tensor:
        """Bias (1, H, q_len, k_len) for queries at q_offset.. and keys at 0..k_len-1.

        Only distances matter, so left padding (which shifts a row's real tokens by the same amount) needs no
        per-row positions: the padded keys are masked out separately.
        """
        device = self.emb.weight.device
        q = torch.arange(q_offset, q_offset + q_len, device=device)
        k = torch.arange(k_len, device=device)
        rel = k[None, :] - q[:, None]  # (Tq, Tk)
        buckets = relative_bucket(rel, self.bidirectional, self.n_buckets, self.max_distance)
        return self.emb(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, H, Tq, Tk)


# ---------------------------------------------------------------------------------------------------------
# rotary (RoPE)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE, computed from positions on the fly (so any position works).

    Layout matches Hugging Face Llama ("rotate half"): dimension i is paired with i + rot_dim/2, so weights
    copy 1:1 without permuting q/k rows. `fraction` < 1 rotates only the first `fraction * head_dim`
    dimensions of each head (partial rotary, GPT-NeoX / Phi) and passes the rest through.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, fraction: float = 1.0) -> None:
        super().__init__()
        rot_dim = int(head_dim * fraction)
        rot_dim -= rot_dim % 2
        if rot_dim <= 0:
            raise ValueError(
                f"rotary fraction {fraction} leaves no dimensions to rotate (head_dim {head_dim})"
            )
        self.rot_dim, self.theta = rot_dim, theta
        inv_freq = 1.0 / theta ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # recomputable: not in checkpoints

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin of shape (B, 1, T, rot_dim/2) for positions (B, T) (or (T,)): one angle per pair."""
        if positions.dim() == 1:
            positions = positions[None]
        angles = positions[:, None, :, None].float() * self.inv_freq  # (B, 1, T, rot_dim/2)
        return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, D) by cos/sin (B, 1, T, rot_dim/2); dimensions past rot_dim pass through.

    Pair (i, i + rot_dim/2) turns by angle_i: the "rotate half" layout written with half-size tables,
    which saves the negation and the full-width products of `x * cos + rotate_half(x) * sin`.
    """
    half = cos.shape[-1]
    if cos.dtype != x.dtype:  # tables are fp32; keep half-precision q/k in their dtype
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    parts = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    if 2 * half < x.shape[-1]:
        parts.append(x[..., 2 * half :])
    return torch.cat(parts, dim=-1)


# ---------------------------------------------------------------------------------------------------------
# images


def sinusoidal_2d(h: int, w: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed (h*w, dim) encodings of a row-major grid: `[sinusoidal(row, dim/2) | sinusoidal(col, dim/2)]`."""
    if dim % 4:
        raise ValueError(f"2D sinusoidal positions need dim divisible by 4, got {dim}")
    rows = torch.arange(h, device=device).repeat_interleave(w)  # (h*w,) 0,0,..,1,1,..
    cols = torch.arange(w, device=device).repeat(h)  # (h*w,) 0,1,..,0,1,..
    return torch.cat([sinusoidal(rows, dim // 2), sinusoidal(cols, dim // 2)], dim=-1)


class Learned2DPositions(nn.Module):
    """Learned row and column vectors (dim/2 each), concatenated per grid cell, flattened row-major."""

    def __init__(self, max_h: int, max_w: int, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"2D learned positions need an even dim, got {dim}")
        self.row = nn.Embedding(max_h, dim // 2)
        self.col = nn.Embedding(max_w, dim // 2)

    def forward(self, h: int, w: int) -> Tensor:
        """(h*w, dim) for an h x w grid (h <= max_h, w <= max_w)."""
        device = self.row.weight.device
        rows = self.row(torch.arange(h, device=device))  # (h, dim/2)
        cols = self.col(torch.arange(w, device=device))  # (w, dim/2)
        grid = torch.cat([rows[:, None].expand(h, w, -1), cols[None].expand(h, w, -1)], dim=-1)
        return grid.reshape(h * w, -1)


def interpolate_grid(pos: Tensor, h: int, w: int) -> Tensor:
    """Resize learned grid encodings pos (N, D) of a square grid to an h x w grid (h*w, D), bicubically.

    This is how a ViT trained at one resolution runs at another (DINO / HF ViT `interpolate_pos_encoding`).
    """
    n, d = pos.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cannot interpolate {n} positions: not a square grid")
    if (h, w) == (side, side):
        return pos
    grid = pos.reshape(1, side, side, d).permute(0, 3, 1, 2)  # (1, D, side, side)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(h * w, d)


__all__ = [
    "Learned2DPositions",
    "LearnedPositions",
    "RelativePositionBias",
    "RotaryEmbedding",
    "apply_rotary",
    "interpolate_grid",
    "positions_from_mask",
    "relative_bucket",
    "sinusoidal",
    "sinusoidal_2d",
]
