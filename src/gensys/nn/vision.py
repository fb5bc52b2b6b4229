"""Image encoders that turn an image into a sequence of feature vectors for cross-attention.

- `ViTEncoder`: patchify -> linear projection -> (+ [CLS]) -> positional encoding -> pre-norm transformer.
- `CNNEncoder`: a stem and residual conv stages; the final h x w x C feature map is flattened row-major into
  an (h*w) x C sequence (the seed notes' 3 x 3 x C -> 9 x C).

Both return (B, N, D) and accept images of other sizes than they were built for: sinusoidal and 2D tables
are evaluated for the new grid, ViT's 1D learned table is resized bicubically (`interpolate_grid`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensys.nn.block import TransformerBlock
from gensys.nn.layers import init_weights
from gensys.nn.positions import Learned2DPositions, interpolate_grid, sinusoidal_2d

IMAGE_POSITIONS = ("learned", "sinusoidal2d", "learned2d", "none")


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p)*(W/p), C*p*p): non-overlapping patches, row-major, flattened (C, p, p)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


class ViTEncoder(nn.Module):
    """Vision transformer: (B, C, H, W) images -> (B, [1 +] h*w, dim) features (after the final norm).

    pos: "learned" (ViT's 1D table, [CLS] included), "sinusoidal2d", "learned2d" (row/col), or "none".
    The [CLS] token gets a position only with the 1D table, as in ViT.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        dim: int = 768,
        n_layers: int = 12,
        n_heads: int = 12,
        d_ff: int = 3072,
        *,
        pos: str = "learned",
        cls_token: bool = True,
        activation: str = "gelu",
        norm_eps: float = 1e-12,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pos not in IMAGE_POSITIONS:
            raise ValueError(f"ViTEncoder pos: unknown {pos!r}; expected {IMAGE_POSITIONS}")
        self.patch_size, self.dim, self.pos = patch_size, dim, pos
        self.grid = image_size // patch_size
        self.patch_proj = nn.Linear(in_channels * patch_size * patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        n_pos = self.grid * self.grid + (1 if cls_token else 0)
        self.pos_emb = nn.Parameter(torch.zeros(1, n_pos, dim)) if pos == "learned" else None
        self.pos_2d = Learned2DPositions(self.grid, self.grid, dim) if pos == "learned2d" else None
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim,
                n_heads,
                d_ff,
                activation=activation,
                norm="layernorm",
                norm_eps=norm_eps,
                dropout=dropout,
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        init_weights(self)
        for p in (self.cls_token, self.pos_emb):
            if p is not None:
                nn.init.normal_(p, std=0.02)

    def positions(self, h: int, w: int) -> Tensor | None:
        """Encodings (1, [1 +] h*w, dim) for an h x w patch grid, or None for pos="none"."""
        if self.pos == "learned":
            assert self.pos_emb is not None
            table = self.pos_emb[0]  # (N0 [+1], dim)
            if self.cls_token is None:
                return interpolate_grid(table, h, w)[None]
            return torch.cat([table[:1], interpolate_grid(table[1:], h, w)])[None]
        if self.pos == "none":
            return None
        if self.pos == "sinusoidal2d":
            grid = sinusoidal_2d(h, w, self.dim, device=self.patch_proj.weight.device)
        else:
            assert self.pos_2d is not None
            grid = self.pos_2d(h, w)
        if self.cls_token is not None:
            grid = torch.cat([grid.new_zeros(1, self.dim), grid])
        return grid[None]

    def forward(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) -> features (B, N, dim)."""
        b, _, h, w = images.shape
        x = self.patch_proj(patchify(images, self.patch_size))  # (B, h*w, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        pos = self.positions(h // self.patch_size, w // self.patch_size)
        if pos is not None:
            x = x + pos.to(x.dtype)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def conv_norm(kind: str, c: int) -> nn.Module:
    """The CNN's normalisation layer: "group" (GroupNorm, 8 groups at most) or "batch" (BatchNorm2d).

    GroupNorm normalises each image on its own, so on a small final map (4x4 cells) it also removes most of
    what is global about an image (how green, how snowy: each group's mean over the map is set to 0). Trained
    from scratch on Flickr8k, such an encoder collapsed to image-independent features. BatchNorm keeps those
    differences between images; in eval mode it uses running statistics, so a prediction does not depend on
    the other images of its batch.
    """
    if kind == "group":
        return nn.GroupNorm(_groups(c), c)
    if kind == "batch":
        return nn.BatchNorm2d(c)
    raise ValueError(f"unknown CNN norm {kind!r}; expected 'group' or 'batch'")


class ResidualBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus a (1x1 conv) shortcut, then ReLU (`conv_norm`)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str = "group") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = conv_norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = conv_norm(norm, c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), conv_norm(norm, c_out))
        )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + self.shortcut(x))


def _groups(c: int) -> int:
    return math.gcd(c, 8)


class CNNEncoder(nn.Module):
    """Small residual CNN: (B, C, H, W) -> (B, h*w, channels[-1]) grid features, flattened row-major.

    Each stage halves the resolution. `grid` > 0 average-pools the final map to grid x grid (e.g. 3 -> 9
    vectors, whatever the input size); 0 keeps the native map. pos adds 2D encodings to the grid.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, ...] | list[int] = (32, 64, 128),
        blocks_per_stage: int = 1,
        grid: int = 3,
        pos: str = "sinusoidal2d",
        max_grid: int = 32,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if pos not in ("sinusoidal2d", "learned2d", "none"):
            raise ValueError(f"CNNEncoder pos: unknown {pos!r}; expected sinusoidal2d, learned2d or none")
        self.dim, self.grid, self.pos = channels[-1], grid, pos
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
            conv_norm(norm, channels[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        c_prev = channels[0]
        for c in channels:
            for j in range(blocks_per_stage):
                stages.append(ResidualBlock(c_prev, c, stride=2 if j == 0 else 1, norm=norm))
                c_prev = c
        self.stages = nn.Sequential(*stages)
        self.pos_2d = Learned2DPositions(max_grid, max_grid, self.dim) if pos == "learned2d" else None

    def forward(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) -> features (B, h*w, channels[-1])."""
        fmap = self.stages(self.stem(images))  # (B, C, h, w)
        if self.grid:
            fmap = F.adaptive_avg_pool2d(fmap, self.grid)  # (B, C, grid, grid)
        b, c, h, w = fmap.shape
        x = fmap.flatten(2).transpose(1, 2)  # (B, h*w, C): cell (r, c) -> index r*w + c
        if self.pos == "sinusoidal2d":
            x = x + sinusoidal_2d(h, w, c, device=x.device).to(x.dtype)
        elif self.pos_2d is not None:
            x = x + self.pos_2d(h, w)
        return x


__all__ = ["IMAGE_POSITIONS", "CNNEncoder", "ResidualBlock", "ViTEncoder", "conv_norm", "patchify"]
