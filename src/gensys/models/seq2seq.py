"""Encoder-decoder transformer (Translate).

    src -> tok_emb (+ positions) -> encoder.blocks (self-attention + MLP) -> memory
    tgt -> tok_emb (+ positions) -> decoder.blocks (causal self-attention + cross-attention over memory + MLP)
        -> lm_head (linear; softmax over the vocabulary is applied by the loss / decoding)

Two proven configurations (tests compare each with its Hugging Face twin):
- `marian_config`: the seed notes' transformer: sinusoidal positions, post-norm LayerNorm, ReLU (or other)
  MLP, biases, embeddings scaled by sqrt(d_model) (HF `MarianMTModel`).
- `t5_config`: T5-style relative position bias shared by the layers of a stack, pre-norm RMSNorm, no
  biases, no 1/sqrt(d) in attention (folded into T5's init), output scaled by d_model^-0.5 before the tied
  lm_head (HF `T5ForConditionalGeneration`).
Learned absolute positions (BART-like) are also available.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gensys.models._util import config_from_dict
from gensys.nn.attention import build_cross_mask, build_self_mask
from gensys.nn.block import Stack
from gensys.nn.cache import KVCache
from gensys.nn.layers import ACTIVATIONS, init_weights, make_norm, packed_linear
from gensys.nn.positions import LearnedPositions, RelativePositionBias, positions_from_mask, sinusoidal
from gensys.nn.static_decode import StepSpec


@dataclass
class Seq2SeqConfig:
    """Settings of the encoder-decoder. Defaults follow the seed notes (sinusoidal, post-norm, ReLU)."""

    vocab_size: int = 8000  # one vocabulary shared by source and target (one tokenizer, tied embeddings)
    d_model: int = 256
    n_heads: int = 4
    head_dim: int | None = None  # None = d_model // n_heads
    d_ff: int = 1024
    n_enc_layers: int = 3
    n_dec_layers: int = 3
    pos: str = "sinusoidal"  # "sinusoidal" | "learned" | "relative"
    max_seq_len: int = 512  # learned positions only
    rel_buckets: int = 32  # relative positions only
    rel_max_distance: int = 128
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    pre_norm: bool = False  # post-norm as in the original transformer; pre-norm adds a final norm per stack
    activation: str = "relu"
    bias: bool = True  # biases in attention and MLP projections
    attn_scale: bool = True  # False: scores are q.k without 1/sqrt(head_dim) (T5)
    scale_embedding: bool = False  # multiply token embeddings by sqrt(d_model) (Marian, original transformer)
    tie_embeddings: bool = True  # lm_head shares tok_emb's weight
    tied_output_scale: bool = False  # decoder output * d_model^-0.5 before lm_head (T5 with tied embeddings)
    lm_head_bias: bool = False  # Marian's final_logits_bias
    dropout: float = 0.1
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.pos not in ("sinusoidal", "learned", "relative"):
            raise ValueError(f"Seq2SeqConfig.pos: unknown {self.pos!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Seq2SeqConfig.activation: unknown {self.activation!r}; expected {ACTIVATIONS}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Seq2SeqConfig:
        """Rebuild from `dataclasses.asdict` output; an unknown key is an error naming it."""
        return config_from_dict(cls, d)


def marian_config(**overrides: Any) -> Seq2SeqConfig:
    """Marian / original-transformer settings (sinusoidal, post-norm LayerNorm, scaled embeddings)."""
    base = dict(pos="sinusoidal", norm="layernorm", pre_norm=False, bias=True, scale_embedding=True)
    return Seq2SeqConfig(**{**base, **overrides})


def t5_config(**overrides: Any) -> Seq2SeqConfig:
    """T5 settings (relative bias, pre-norm RMSNorm, no biases, unscaled attention, scaled tied output)."""
    base = dict(
        pos="relative",
        norm="rmsnorm",
        norm_eps=1e-6,
        pre_norm=True,
        bias=False,
        attn_scale=False,
        tie_embeddings=True,
        tied_output_scale=True,
    )
    return Seq2SeqConfig(**{**base, **overrides})


class Seq2Seq(nn.Module):
    """Encoder-decoder transformer: `encode` -> memory, `decode` -> logits, `forward` = both."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        head_dim = cfg.head_dim or d // cfg.n_heads
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.emb_scale = math.sqrt(d) if cfg.scale_embedding else 1.0
        self.enc_pos_emb = self.dec_pos_emb = None
        self.enc_rel_bias = self.dec_rel_bias = None
        if cfg.pos == "learned":
            self.enc_pos_emb = LearnedPositions(cfg.max_seq_len, d)
            self.dec_pos_emb = LearnedPositions(cfg.max_seq_len, d)
        elif cfg.pos == "relative":
            # One table per stack, shared by all its layers; encoder sees both directions, decoder the past.
            rel = dict(n_buckets=cfg.rel_buckets, max_distance=cfg.rel_max_distance)
            self.enc_rel_bias = RelativePositionBias(cfg.n_heads, bidirectional=True, **rel)
            self.dec_rel_bias = RelativePositionBias(cfg.n_heads, bidirectional=False, **rel)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        block = dict(
            dim=d,
            n_heads=cfg.n_heads,
            d_ff=cfg.d_ff,
            head_dim=head_dim,
            activation=cfg.activation,
            norm=cfg.norm,
            norm_eps=cfg.norm_eps,
            pre_norm=cfg.pre_norm,
            attn_bias=cfg.bias,
            mlp_bias=cfg.bias,
            dropout=cfg.dropout,
            attn_scale=None if cfg.attn_scale else 1.0,
        )

        def final_norm() -> nn.Module | None:
            return make_norm(cfg.norm, d, cfg.norm_eps) if cfg.pre_norm else None

        self.encoder = Stack(cfg.n_enc_layers, final_norm(), **block)
        self.decoder = Stack(cfg.n_dec_layers, final_norm(), cross_attention=True, **block)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=cfg.lm_head_bias)
        init_weights(self, cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def new_cache(self, initial_capacity: int = 64) -> KVCache:
        """An empty KV cache (decoder self-attention grows; cross-attention K/V are filled on first use)."""
        return KVCache(self.cfg.n_dec_layers, initial_capacity)

    def _embed(self, ids: Tensor, positions: Tensor, pos_emb: LearnedPositions | None) -> Tensor:
        x = self.tok_emb(ids) * self.emb_scale  # (B, T, D)
        if self.cfg.pos == "sinusoidal":
            x = x + sinusoidal(positions, self.cfg.d_model).to(x.dtype)
        elif pos_emb is not None:
            x = x + pos_emb(positions)
        return self.drop(x)

    def step_spec(self) -> StepSpec | None:
        """The decoder as `StaticDecoder` needs it, or None with relative position biases (T5), which the
        fixed-shape step does not cover."""
        if self.dec_rel_bias is not None:
            return None
        return StepSpec(
            embed=lambda ids, positions: self._embed(ids, positions, self.dec_pos_emb),
            blocks=list(self.decoder.blocks),
            final_norm=self.decoder.norm,
            head_owner=self,
            head=self.lm_head,
            head_scale=self.cfg.d_model**-0.5 if self.cfg.tied_output_scale else 1.0,
        )

    def encode(self, src_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Memory (B, S, D) for src_ids (B, S); src_mask (B, S) with 1 = real token (either padding side)."""
        s = src_ids.shape[1]
        if src_mask is not None:
            positions = positions_from_mask(src_mask, s)
        else:
            positions = torch.arange(s, device=src_ids.device)[None]
        x = self._embed(src_ids, positions, self.enc_pos_emb)
        mask, _ = build_self_mask(src_mask, s, s, causal=False)
        bias = self.enc_rel_bias(s, s) if self.enc_rel_bias is not None else None
        return self.encoder(x, mask=mask, bias=bias)

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
        """Logits (B, T, V) for tgt_ids (B, T) attending to memory (B, S, D).

        memory_mask: (B, S), 1 = real source token. attention_mask: (B, T_past + T) for left-padded targets;
        positions default to `cumsum(mask) - 1` or continue from `cache.length`. With a cache, pass only the
        new tokens; cross-attention K/V are computed from `memory` on the first call and reused after.
        """
        b, t = tgt_ids.shape
        past = cache.length if cache is not None else 0
        if positions is None:
            if attention_mask is not None:
                positions = positions_from_mask(attention_mask, t)
            else:
                positions = torch.arange(past, past + t, device=tgt_ids.device)[None]
        x = self._embed(tgt_ids, positions, self.dec_pos_emb)
        mask, is_causal = build_self_mask(attention_mask, t, past + t, causal=True)
        bias = self.dec_rel_bias(t, past + t, q_offset=past) if self.dec_rel_bias is not None else None
        h = self.decoder(
            x,
            mask=mask,
            is_causal=is_causal,
            bias=bias,
            cache=cache,
            memory=memory,
            memory_mask=build_cross_mask(memory_mask),
        )
        if last_only:
            h = h[:, -1:]
        if self.cfg.tied_output_scale:
            h = h * self.cfg.d_model**-0.5
        logits = packed_linear(h, self, "lm_head", (self.lm_head,))  # decoding step: see packed_linear
        return self.lm_head(h) if logits is None else logits

    def forward(
        self, src_ids: Tensor, src_mask: Tensor | None, tgt_ids: Tensor, tgt_mask: Tensor | None = None
    ) -> Tensor:
        """Teacher-forced training pass: logits (B, T, V) for every target position."""
        memory = self.encode(src_ids, src_mask)
        return self.decode(tgt_ids, memory, src_mask, attention_mask=tgt_mask)


def build_seq2seq(cfg: Seq2SeqConfig) -> Seq2Seq:
    """Build an encoder-decoder from its config."""
    return Seq2Seq(cfg)


__all__ = ["Seq2Seq", "Seq2SeqConfig", "build_seq2seq", "marian_config", "t5_config"]
