"""Image captioner: an image encoder (ViT or CNN) and a text decoder with cross-attention (Caption).

    image -> vision encoder -> mem_proj -> memory (B, N, D)
    caption tokens -> tok_emb (+ positions) -> decoder.blocks (causal self-attn + cross-attn + MLP) -> lm_head

Same decoding interface as `Seq2Seq`: `encode(images)` once, then `decode(tokens, memory, cache=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gensys.models._util import config_from_dict
from gensys.nn.attention import build_cross_mask, build_self_mask
from gensys.nn.block import Stack
from gensys.nn.cache import KVCache
from gensys.nn.layers import ACTIVATIONS, init_weights, make_norm
from gensys.nn.positions import LearnedPositions, positions_from_mask, sinusoidal
from gensys.nn.static_decode import StepSpec
from gensys.nn.vision import CNNEncoder, ViTEncoder


@dataclass
class CaptionerConfig:
    """Settings of the captioner: image encoder (`enc_*`, `patch_size`, `cnn_*`) and text decoder."""

    vocab_size: int = 8000
    encoder: str = "vit"  # "vit" | "cnn"
    image_size: int = 224
    in_channels: int = 3
    # ViT encoder
    patch_size: int = 16
    enc_d_model: int = 256
    enc_layers: int = 4
    enc_heads: int = 4
    enc_d_ff: int = 1024
    enc_pos: str = (
        "learned"  # ViT: learned | sinusoidal2d | learned2d | none; CNN: sinusoidal2d | learned2d | none
    )
    cls_token: bool = True
    enc_norm_eps: float = 1e-6
    # CNN encoder
    cnn_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    cnn_blocks_per_stage: int = 1
    cnn_grid: int = 3  # pool the final feature map to grid x grid (3 -> 9 memory vectors); 0 = keep
    cnn_norm: str = "group"  # "group" | "batch" (see gensys.nn.vision.conv_norm)
    # text decoder
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    pos: str = "learned"  # "learned" | "sinusoidal"
    max_seq_len: int = 64
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    pre_norm: bool = True
    activation: str = "gelu"
    tie_embeddings: bool = True
    dropout: float = 0.1
    init_std: float = 0.02
    # Auxiliary head: which caption words an image's captions contain, from the mean image memory
    # (`tag_logits`). Trained with `loss.tag_weight` it gives the encoder a direct signal; without it a
    # from-scratch encoder can collapse and the decoder turns into an image-blind language model.
    tag_head: bool = False

    def __post_init__(self) -> None:
        if self.encoder not in ("vit", "cnn"):
            raise ValueError(f"CaptionerConfig.encoder: unknown {self.encoder!r}; expected 'vit' or 'cnn'")
        if self.pos not in ("learned", "sinusoidal"):
            raise ValueError(f"CaptionerConfig.pos: unknown {self.pos!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"CaptionerConfig.activation: unknown {self.activation!r}; expected {ACTIVATIONS}"
            )
        self.cnn_channels = list(self.cnn_channels)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptionerConfig:
        """Rebuild from `dataclasses.asdict` output; an unknown key is an error naming it."""
        return config_from_dict(cls, d)


class Captioner(nn.Module):
    """Image encoder + caption decoder: `encode(images)` -> memory, `decode(...)` -> logits."""

    def __init__(self, cfg: CaptionerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if cfg.encoder == "vit":
            self.image_encoder: nn.Module = ViTEncoder(
                cfg.image_size,
                cfg.patch_size,
                cfg.in_channels,
                cfg.enc_d_model,
                cfg.enc_layers,
                cfg.enc_heads,
                cfg.enc_d_ff,
                pos=cfg.enc_pos,
                cls_token=cfg.cls_token,
                norm_eps=cfg.enc_norm_eps,
                dropout=cfg.dropout,
            )
            enc_dim = cfg.enc_d_model
        else:
            self.image_encoder = CNNEncoder(
                cfg.in_channels,
                cfg.cnn_channels,
                cfg.cnn_blocks_per_stage,
                cfg.cnn_grid,
                pos=cfg.enc_pos if cfg.enc_pos != "learned" else "learned2d",
                norm=cfg.cnn_norm,
            )
            enc_dim = cfg.cnn_channels[-1]
        # Projects image features to the decoder width (and lets a frozen encoder's features be re-mapped).
        self.mem_proj = nn.Linear(enc_dim, d)
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = LearnedPositions(cfg.max_seq_len, d) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        final = make_norm(cfg.norm, d, cfg.norm_eps) if cfg.pre_norm else None
        self.decoder = Stack(
            cfg.n_layers,
            final,
            dim=d,
            n_heads=cfg.n_heads,
            d_ff=cfg.d_ff,
            activation=cfg.activation,
            norm=cfg.norm,
            norm_eps=cfg.norm_eps,
            pre_norm=cfg.pre_norm,
            cross_attention=True,
            dropout=cfg.dropout,
        )
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.tag_head = nn.Linear(d, cfg.vocab_size) if cfg.tag_head else None
        if self.tag_head is not None:
            init_weights(self.tag_head, cfg.init_std)
        init_weights(self.decoder, cfg.init_std)
        init_weights(self.tok_emb, cfg.init_std)
        if self.pos_emb is not None:
            init_weights(self.pos_emb, cfg.init_std)
        init_weights(self.mem_proj, cfg.init_std)
        init_weights(self.lm_head, cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def new_cache(self, initial_capacity: int = 64) -> KVCache:
        """An empty KV cache for incremental caption decoding."""
        return KVCache(self.cfg.n_layers, initial_capacity)

    def encode(self, images: Tensor) -> Tensor:
        """Memory (B, N, d_model) for images (B, C, H, W) (already resized and normalised)."""
        return self.mem_proj(self.image_encoder(images))

    def tag_logits(self, memory: Tensor) -> Tensor:
        """Logits (B, V) of "this token occurs in the image's captions" from memory (B, N, D)."""
        if self.tag_head is None:
            raise ValueError("this captioner has no tag head (model.tag_head: false)")
        return self.tag_head(memory.mean(dim=1))

    def embed_tokens(self, tgt_ids: Tensor, positions: Tensor) -> Tensor:
        """Caption token embeddings plus their positions: (B, T, D)."""
        x = self.tok_emb(tgt_ids)  # (B, T, D)
        if self.pos_emb is not None:
            return x + self.pos_emb(positions)
        return x + sinusoidal(positions, self.cfg.d_model).to(x.dtype)

    def step_spec(self) -> StepSpec:
        """The caption decoder as `StaticDecoder` needs it (gensys.nn.static_decode)."""
        return StepSpec(
            embed=self.embed_tokens,
            blocks=list(self.decoder.blocks),
            final_norm=self.decoder.norm,
            head_owner=self,
            head=self.lm_head,
        )

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Logits (B, T, V) for caption tokens (B, T); arguments as in `Seq2Seq.decode`."""
        b, t = tgt_ids.shape
        past = cache.length if cache is not None else 0
        if positions is None:
            if attention_mask is not None:
                positions = positions_from_mask(attention_mask, t)
            else:
                positions = torch.arange(past, past + t, device=tgt_ids.device)[None]
        x = self.drop(self.embed_tokens(tgt_ids, positions))  # (B, T, D)
        mask, is_causal = build_self_mask(attention_mask, t, past + t, causal=True)
        h = self.decoder(
            x,
            mask=mask,
            is_causal=is_causal,
            cache=cache,
            memory=memory,
            memory_mask=build_cross_mask(memory_mask),
        )
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h)

    def forward(self, images: Tensor, tgt_ids: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced training pass: logits (B, T, V)."""
        return self.decode(tgt_ids, self.encode(images), attention_mask=tgt_mask)


def build_captioner(cfg: CaptionerConfig) -> Captioner:
    """Build a captioner from its config."""
    return Captioner(cfg)


__all__ = ["Captioner", "CaptionerConfig", "build_captioner"]
