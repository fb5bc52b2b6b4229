"""Decoder-only language model (Smart Compose, Chat, RAG), GPT-2 style or Llama style.

GPT-2 style: learned absolute positions, LayerNorm, GELU (tanh) MLP, biases, tied embeddings.
Llama style: rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention, no biases.

    tok_emb -> (+ positions) -> blocks[i] (pre-norm self-attention + MLP) -> norm -> lm_head

Decoding calls `forward` with a `KVCache` and only the new tokens; positions then continue from
`cache.length` (or, with a padding mask, from the number of real tokens so far).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gensys.models._util import config_from_dict
from gensys.nn.attention import build_segment_mask, build_self_mask, segment_positions
from gensys.nn.block import TransformerBlock
from gensys.nn.cache import KVCache
from gensys.nn.layers import ACTIVATIONS, init_weights, make_norm, packed_linear
from gensys.nn.positions import LearnedPositions, RotaryEmbedding, positions_from_mask, sinusoidal
from gensys.nn.static_decode import StepSpec


@dataclass
class DecoderLMConfig:
    """Settings of a decoder-only LM. Defaults are Llama style; see `gpt2_config` / `llama_config`."""

    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = None  # None = n_heads (plain MHA); 1 = multi-query
    head_dim: int | None = None  # None = d_model // n_heads
    d_ff: int = 1376
    max_seq_len: int = 2048  # table size for learned positions; informational otherwise
    pos: str = "rope"  # "rope" | "learned" | "sinusoidal" | "none"
    rope_theta: float = 10000.0
    rotary_fraction: float = 1.0  # share of each head's dims that RoPE rotates
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm"
    norm_eps: float = 1e-5
    activation: str = "swiglu"  # relu | gelu | gelu_tanh | silu | swiglu | geglu
    attn_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.pos not in ("rope", "learned", "sinusoidal", "none"):
            raise ValueError(f"DecoderLMConfig.pos: unknown {self.pos!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"DecoderLMConfig.activation: unknown {self.activation!r}; expected {ACTIVATIONS}"
            )
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderLMConfig:
        """Rebuild from `dataclasses.asdict` output; an unknown key is an error naming it."""
        return config_from_dict(cls, d)


def gpt2_config(**overrides: Any) -> DecoderLMConfig:
    """GPT-2 style settings (learned positions, LayerNorm, tanh-GELU, biases, tied embeddings)."""
    base: dict[str, Any] = dict(
        pos="learned",
        norm="layernorm",
        activation="gelu_tanh",
        attn_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        max_seq_len=1024,
        d_ff=4 * overrides.get("d_model", DecoderLMConfig.d_model),
    )
    return DecoderLMConfig(**{**base, **overrides})


def llama_config(**overrides: Any) -> DecoderLMConfig:
    """Llama style settings (RoPE, RMSNorm, SwiGLU, no biases; set n_kv_heads for GQA)."""
    return DecoderLMConfig(
        **{**dict(pos="rope", norm="rmsnorm", activation="swiglu", norm_eps=1e-6), **overrides}
    )


class DecoderLM(nn.Module):
    """Decoder-only transformer LM: `forward` -> logits (B, T, V), `hidden` -> normed states (B, T, D)."""

    def __init__(self, cfg: DecoderLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = LearnedPositions(cfg.max_seq_len, cfg.d_model) if cfg.pos == "learned" else None
        self.rope = (
            RotaryEmbedding(head_dim, cfg.rope_theta, cfg.rotary_fraction) if cfg.pos == "rope" else None
        )
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            TransformerBlock(
                cfg.d_model,
                cfg.n_heads,
                cfg.d_ff,
                n_kv_heads=cfg.n_kv_heads,
                head_dim=head_dim,
                activation=cfg.activation,
                norm=cfg.norm,
                norm_eps=cfg.norm_eps,
                pre_norm=True,
                attn_bias=cfg.attn_bias,
                mlp_bias=cfg.mlp_bias,
                dropout=cfg.dropout,
            )
            for _ in range(cfg.n_layers)
        )
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg.init_std)
        # GPT-2: residual projections scaled down by depth so the residual stream's variance stays ~constant.
        for block in self.blocks:
            for proj in (block.attn.o_proj, block.mlp.down_proj):
                nn.init.normal_(proj.weight, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def new_cache(self, initial_capacity: int = 64) -> KVCache:
        """An empty KV cache for incremental decoding with this model."""
        return KVCache(self.cfg.n_layers, initial_capacity)

    def embed(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        """Token embeddings plus absolute positions (learned or sinusoidal; RoPE acts in attention)."""
        x = self.tok_emb(input_ids)  # (B, T, D)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        elif self.cfg.pos == "sinusoidal":
            x = x + sinusoidal(positions, self.cfg.d_model).to(x.dtype)
        return x

    def step_spec(self) -> StepSpec:
        """The decoder as `StaticDecoder` needs it (the fixed-shape decode step, gensys.nn.static_decode)."""
        return StepSpec(
            embed=self.embed,
            blocks=list(self.blocks),
            final_norm=self.norm,
            head_owner=self,
            head=self.lm_head,
            rope=self.rope,
        )

    def hidden(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """Final normed hidden states (B, T, D) for input_ids (B, T); arguments as in `forward`."""
        b, t = input_ids.shape
        past = cache.length if cache is not None else 0
        if segment_ids is not None:
            if cache is not None or attention_mask is not None:
                raise ValueError(
                    "segment_ids (packed rows) work on the full-sequence path only: pass neither a cache nor "
                    "an attention_mask (segment 0 already marks padding)"
                )
            if segment_ids.shape != input_ids.shape:
                raise ValueError(f"segment_ids {tuple(segment_ids.shape)} != input_ids {(b, t)}")
            if positions is None:
                positions = segment_positions(segment_ids)  # (B, T), 0 at each example's first token
        if positions is None:
            if attention_mask is not None:
                positions = positions_from_mask(attention_mask, t)  # (B, T)
            else:
                positions = torch.arange(past, past + t, device=input_ids.device)[None]  # (1, T)
        x = self.drop(self.embed(input_ids, positions))  # (B, T, D)
        rope = self.rope(positions) if self.rope is not None else None
        if segment_ids is not None:
            mask, is_causal = build_segment_mask(segment_ids), False  # (B, 1, T, T)
        else:
            mask, is_causal = build_self_mask(attention_mask, t, past + t, causal=True)
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, is_causal=is_causal, rope=rope, cache=cache, layer=i)
        return self.norm(x)

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, T, V) for input_ids (B, T).

        attention_mask: (B, T_past + T), 1 = real token (left padding); positions: (B, T), default
        `cumsum(mask) - 1` or continuing from `cache.length`; cache: appended to in place.
        `last_only=True` returns logits for the last position only, (B, 1, V) (a decoding step or prefill).
        segment_ids: (B, T) int for packed rows, 0 = padding, 1..k = example index (contiguous runs): each
        token attends only to earlier tokens of its own example and positions restart at 0 per example, so
        every example gets the logits it would get alone. Training/full-forward only (no cache, no mask).
        """
        h = self.hidden(
            input_ids,
            attention_mask=attention_mask,
            positions=positions,
            cache=cache,
            segment_ids=segment_ids,
        )
        if last_only:
            h = h[:, -1:]
        logits = packed_linear(h, self, "lm_head", (self.lm_head,))  # decoding step: see packed_linear
        return self.lm_head(h) if logits is None else logits


def build_decoder_lm(cfg: DecoderLMConfig) -> DecoderLM:
    """Build a decoder-only LM from its config."""
    return DecoderLM(cfg)


__all__ = ["DecoderLM", "DecoderLMConfig", "build_decoder_lm", "gpt2_config", "llama_config"]
