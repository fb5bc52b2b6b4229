"""Cross-attention maps: where the decoder looked in the image while it wrote each word.

`gensys.nn.attention.Attention` runs SDPA and does not return its probabilities, so (rather than change the
shared layer) this module records each decoder block's cross-attention *inputs* with forward hooks during one
teacher-forced pass and recomputes softmax(q k^T * scale) from the layer's own q_proj / k_proj. The result
equals what SDPA used (no mask: every image position is visible).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gensys.models.captioner import Captioner


@torch.inference_mode()
def cross_attention(model: Captioner, pixels: Tensor, tokens: list[int], bos_id: int) -> Tensor:
    """Attention probabilities (L, H, T, N) of the decoder over the N image positions, for one image
    (1, 3, S, S) and its caption `tokens` (no BOS); row t is the query that predicts tokens[t]."""
    captured: list[tuple[Any, Tensor, Tensor]] = []

    def hook(module: Any, args: tuple, kwargs: dict, _out: Any) -> None:
        captured.append((module, args[0], kwargs["memory"]))

    handles = [
        b.cross_attn.register_forward_hook(hook, with_kwargs=True)
        for b in model.decoder.blocks
        if b.cross_attn is not None
    ]
    try:
        memory = model.encode(pixels)  # (1, N, D)
        ids = torch.tensor([[bos_id, *tokens]], device=pixels.device)
        model.decode(ids, memory)
    finally:
        for h in handles:
            h.remove()
    maps = []
    for attn, x, mem in captured:
        q = attn._heads(attn.q_proj(x))  # (1, H, T, Dh)
        k = attn._heads(attn.k_proj(mem))  # (1, H_kv, N, Dh)
        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scale = attn.scale if attn.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        maps.append(torch.softmax((q @ k.transpose(-2, -1)).float() * scale, dim=-1)[0])  # (H, T, N)
    return torch.stack(maps)[:, :, : len(tokens)]  # (L, H, T, N)


def spatial_grid(model: Captioner, n_positions: int) -> tuple[int, int, int]:
    """(skip, rows, cols): how many leading memory positions are not image cells ([CLS]) and the grid."""
    skip = 1 if model.cfg.encoder == "vit" and model.cfg.cls_token else 0
    side = math.isqrt(n_positions - skip)
    if side * side != n_positions - skip:
        raise ValueError(f"{n_positions - skip} image positions do not form a square grid")
    return skip, side, side


def save_attention_png(
    path: str | Path,
    image_u8: Tensor,
    words: list[str],
    word_maps: Tensor,
    title: str = "",
) -> Path:
    """One panel per word: the image with the word's attention (rows x cols, upsampled) laid over it.

    image_u8 (3, S, S) uint8; word_maps (W, rows, cols) (already averaged over heads/layers and tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = image_u8.permute(1, 2, 0).cpu().numpy()
    n = len(words) + 1
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0][0].imshow(img)
    axes[0][0].set_title("image", fontsize=8)
    s = img.shape[0]
    for i, (w, m) in enumerate(zip(words, word_maps), start=1):
        ax = axes[i // cols][i % cols]
        up = torch.nn.functional.interpolate(m[None, None].float(), size=(s, s), mode="bilinear")[0, 0]
        ax.imshow(img)
        # Colours span each panel's own min..max: the relative focus of that word, not absolute mass.
        ax.imshow(up.numpy(), cmap="jet", alpha=0.45, vmin=float(up.min()), vmax=float(up.max()))
        ax.set_title(w, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def word_attention(
    model: Captioner, pixels: Tensor, tokens: list[int], positions: list[list[int]], bos_id: int
) -> Tensor:
    """(W, rows, cols) map per word: cross-attention averaged over layers, heads and the word's tokens."""
    probs = cross_attention(model, pixels, tokens, bos_id)  # (L, H, T, N)
    per_token = probs.mean(dim=(0, 1))  # (T, N)
    skip, rows, cols = spatial_grid(model, per_token.shape[-1])
    cells = per_token[:, skip:]
    cells = cells / cells.sum(-1, keepdim=True).clamp_min(1e-12)  # share of the attention on image cells
    return torch.stack([cells[ps].mean(0) for ps in positions]).view(len(positions), rows, cols)


__all__ = ["cross_attention", "save_attention_png", "spatial_grid", "word_attention"]
