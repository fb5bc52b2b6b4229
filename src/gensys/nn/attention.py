"""Multi-head attention: self / cross, grouped-query (n_kv_heads < n_heads), with a KV cache.

Scores are `q k^T * scale` (scale = 1/sqrt(head_dim) unless given) softmaxed over keys. The default path is
`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels where available); an
explicit path (`attend_math`) handles additive attention biases such as T5's relative positions and serves
as the readable reference the fast path is tested against.

Masks are boolean with True = "may attend", shaped (B or 1, 1, Tq, Tk). `build_self_mask` / `build_cross_mask`
turn a (B, T) padding mask (1 = real token) into one and return None when no mask is needed, so the common
unpadded training step takes SDPA's `is_causal` fast path. Packed rows (several examples per row) use
`build_segment_mask` instead: causal and block-diagonal by (B, T) segment ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensys.nn.cache import KVCache
from gensys.nn.layers import packed_linear
from gensys.nn.positions import apply_rotary


def build_self_mask(
    key_mask: Tensor | None, q_len: int, k_len: int, causal: bool
) -> tuple[Tensor | None, bool]:
    """(mask, is_causal) for self-attention where the queries are the last q_len of k_len positions.

    key_mask: (B, k_len) with 1/True = real token, or None (no padding). Returns mask (B|1, 1, q_len, k_len)
    or None, and whether SDPA may use its causal fast path instead (no padding, no cached past).
    """
    if key_mask is not None and key_mask.shape[-1] != k_len:
        raise ValueError(
            f"attention_mask covers {key_mask.shape[-1]} positions; expected cached + new = {k_len}"
        )
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None  # an all-ones mask masks nothing: keep the fast path
    past = k_len - q_len
    if key_mask is None:
        if not causal or q_len == 1:
            return None, False  # one new query may see every cached key
        if past == 0:
            return None, True
    device = key_mask.device if key_mask is not None else None
    q_idx = torch.arange(past, k_len, device=device)[:, None]  # (Tq, 1) absolute query positions
    k_idx = torch.arange(k_len, device=device)[None, :]  # (1, Tk)
    mask = (k_idx <= q_idx) if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    mask = mask[None, None]  # (1, 1, Tq, Tk)
    if key_mask is not None:
        # Padded keys are hidden; every query still sees itself, so a padded query's row is never empty
        # (an all -inf row would give NaN in the explicit path). Real queries see themselves anyway.
        mask = (mask & key_mask.bool()[:, None, None, :]) | (k_idx == q_idx)[None, None]
    return mask, False


def build_cross_mask(memory_mask: Tensor | None) -> Tensor | None:
    """(B, 1, 1, S) boolean mask from a (B, S) memory padding mask, or None if nothing is padded."""
    if memory_mask is None or bool(memory_mask.all()):
        return None
    return memory_mask.bool()[:, None, None, :]


def build_segment_mask(segment_ids: Tensor) -> Tensor:
    """(B, 1, T, T) boolean self-attention mask of packed rows: causal and block-diagonal by segment.

    segment_ids: (B, T) int, 0 = padding, 1..k = the example a token belongs to (each a contiguous run). A
    token sees only earlier tokens of its own example; a padding token sees only itself, so no softmax row is
    empty (an all-masked row gives NaN) and no real token ever sees padding.
    """
    t = segment_ids.shape[-1]
    idx = torch.arange(t, device=segment_ids.device)
    causal = idx[None, :] <= idx[:, None]  # (T, T)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    real_or_self = (segment_ids > 0)[:, :, None] | (idx[None, :] == idx[:, None])  # (B, T, T)
    return (same & causal & real_or_self)[:, None]  # (B, 1, T, T)


def segment_positions(segment_ids: Tensor) -> Tensor:
    """Positions (B, T) restarting at 0 where each segment of `segment_ids` (B, T) starts; 0 on padding.

    Lives beside `build_segment_mask` because the two together make each packed example see exactly what it
    would see alone (RoPE / learned positions included).
    """
    b, t = segment_ids.shape
    idx = torch.arange(t, device=segment_ids.device).expand(b, t)  # (B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, idx, 0).cummax(-1).values  # (B, T) index of each token's segment start
    return (idx - first) * (segment_ids > 0)


def attend_math(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout: float = 0.0,
) -> Tensor:
    """softmax(q k^T * scale + bias, masked) v, written out. q (B, H, Tq, D); k, v (B, H_kv, Tk, D)."""
    if k.shape[1] != q.shape[1]:  # grouped-query: each K/V head serves H / H_kv query heads
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if bias is not None:
        scores = scores + bias
    if is_causal:
        tq, tk = scores.shape[-2:]
        causal = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        mask = causal if mask is None else mask & causal
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout > 0:
        probs = F.dropout(probs, p=dropout)
    return torch.matmul(probs, v)  # (B, H, Tq, D)


def attend_one_query(
    q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, bias: Tensor | None = None
) -> Tensor:
    """Attention of one query per row: q (B, H, 1, D), k, v (B, H_kv, Tk, D) -> (B, H, 1, D).

    The H / H_kv query heads that share a K/V head become the rows of one matmul, so grouped-query K/V are
    never repeated. For a decoding step of several rows with GQA this is about 2x faster than CPU SDPA
    (measured, torch 2.13); with one row or plain MHA SDPA is faster and stays the path. `bias` is an
    additive (B, 1, 1, Tk) score bias (-inf masks a key; the fixed-shape decode step masks unused slots so).
    """
    b, h, _, d = q.shape
    h_kv = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    q = q.reshape(b, h_kv, h // h_kv, d)  # (B, H_kv, H / H_kv, D): query heads grouped by K/V head
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)  # (B, H_kv, H / H_kv, Tk)
    if bias is not None:
        scores = scores.add_(bias)
    if scores.dtype == torch.float32:
        probs = scores.softmax(dim=-1)
    else:
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # half-precision scores: fp32 softmax
    return torch.matmul(probs, v).view(b, h, 1, d)


def attend_with_prefix(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    prefix: tuple[Tensor, Tensor],
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Attention over a shared prefix plus per-row keys; q (N, H, T, D), k, v (N, H_kv, Ts, D).

    `prefix` = (pk, pv), each (B, H_kv, Lp, D), is shared by the N / B consecutive rows of each group (the
    beams of one prompt): the keys are, per row, cat(prefix, own) along time, but the prefix is read once per
    group. The queries of a group's rows and heads become the rows of one matmul against it; both parts share
    one softmax. `mask` (N|1, 1, T, Lp + Ts) is boolean, True = attend, as for the other paths.
    """
    pk, pv = prefix
    n_rows, h, t, d = q.shape
    b, h_kv, lp, _ = pk.shape
    ts, hg, n = k.shape[2], h // h_kv, n_rows // b
    scale = d**-0.5 if scale is None else scale
    if mask is None and is_causal and t > 1:
        mask, _ = build_self_mask(None, t, lp + ts, causal=True)

    def grouped(x: Tensor, last: int) -> Tensor:  # (N, H, T, X) -> (B, H_kv, n * hg * T, X)
        x = x.reshape(b, n, h_kv, hg, t, last).permute(0, 2, 1, 3, 4, 5)
        return x.reshape(b, h_kv, n * hg * t, last)

    def ungrouped(x: Tensor, last: int) -> Tensor:  # inverse of `grouped`
        x = x.view(b, h_kv, n, hg, t, last).permute(0, 2, 1, 3, 4, 5)
        return x.reshape(n_rows, h, t, last)

    s_pre = ungrouped(torch.matmul(grouped(q, d), pk.transpose(-2, -1)), lp)  # (N, H, T, Lp)
    s_own = torch.matmul(q.reshape(n_rows, h_kv, hg * t, d), k.transpose(-2, -1)).view(n_rows, h, t, ts)
    scores = torch.cat([s_pre, s_own], dim=-1).mul_(scale)  # (N, H, T, Lp + Ts)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(-1) if scores.dtype == torch.float32 else scores.float().softmax(-1).to(q.dtype)
    out = ungrouped(torch.matmul(grouped(probs[..., :lp], lp), pv), d)  # (N, H, T, D)
    own = torch.matmul(probs[..., lp:].reshape(n_rows, h_kv, hg * t, ts), v).view(n_rows, h, t, d)
    return out + own


class Attention(nn.Module):
    """Multi-head (grouped-query) attention with separate q/k/v/o projections.

    Self-attention when `memory` is None, cross-attention over `memory` otherwise. Head counts are derived
    from the projections' sizes at run time (`q_proj.out_features // head_dim`), so a tensor-parallel split
    of q/k/v (columns) and o (rows) needs no change here.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        kv_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        self.head_dim = dim // n_heads if head_dim is None else head_dim
        kv_dim = dim if kv_dim is None else kv_dim
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(kv_dim, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(kv_dim, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=bias)
        self.dropout = dropout
        self.scale = scale  # None = 1/sqrt(head_dim); T5 uses 1.0 (folded into its init)

    def _qkv(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return self.q_proj, self.k_proj, self.v_proj

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        x: Tensor,
        *,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        bias: Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """x (B, T, dim) -> (B, T, dim).

        mask: boolean (B|1, 1, T, Tk), True = attend. rope: (cos, sin) for the new positions. bias: additive
        (B|1, H, T, Tk) scores bias (forces the explicit path). cache: self-attention appends this step's K/V
        to layer `layer`; cross-attention computes K/V from `memory` once and reuses them afterwards.
        """
        b, t, _ = x.shape
        qkv = None if memory is not None else packed_linear(x, self, "qkv", self._qkv())
        if qkv is not None:
            # Decoding step: q|k|v from one matmul, and one rotary call for q and k together.
            n_q, n_k = self.q_proj.out_features, self.k_proj.out_features
            qk = self._heads(qkv[..., : n_q + n_k])  # (B, H + H_kv, T, D)
            if rope is not None:
                qk = apply_rotary(qk, *rope)
            n_heads = n_q // self.head_dim
            q, k = qk[:, :n_heads], qk[:, n_heads:]  # (B, H, T, D), (B, H_kv, T, D)
            v = self._heads(qkv[..., n_q + n_k :])
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, H_kv, T_past + T, D)
        elif memory is None:
            q = self._heads(self.q_proj(x))  # (B, H, T, D)
            k = self._heads(self.k_proj(x))  # (B, H_kv, T, D)
            v = self._heads(self.v_proj(x))
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, H_kv, T_past + T, D)
        else:
            q = packed_linear(x, self, "q", (self.q_proj,))
            q = self._heads(self.q_proj(x) if q is None else q)  # (B, H, T, D)
            cached = cache.get_cross(layer) if cache is not None else None
            if cached is None:
                k = self._heads(self.k_proj(memory))  # (B, H_kv, S, D)
                v = self._heads(self.v_proj(memory))
                if cache is not None:
                    cache.set_cross(layer, k, v)
            else:
                k, v = cached
        dropout = self.dropout if self.training else 0.0
        prefix = cache.prefix[layer] if cache is not None and memory is None else None
        if prefix is not None:
            if bias is not None or dropout:
                raise ValueError("a shared-prefix cache supports neither attention biases nor dropout")
            out = attend_with_prefix(q, k, v, prefix, mask=mask, is_causal=is_causal, scale=self.scale)
        elif bias is None and mask is None and t == 1 and b > 1 and k.shape[1] != q.shape[1] and not dropout:
            out = attend_one_query(q, k, v, scale=self.scale)
        elif bias is None:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=is_causal,
                scale=self.scale,
                enable_gqa=k.shape[1] != q.shape[1],
            )
        else:
            out = attend_math(
                q, k, v, mask=mask, bias=bias, is_causal=is_causal, scale=self.scale, dropout=dropout
            )
        out = out.transpose(1, 2).reshape(b, t, -1)  # (B, T, H * D)
        proj = packed_linear(out, self, "o", (self.o_proj,))
        return self.o_proj(out) if proj is None else proj


__all__ = [
    "Attention",
    "attend_math",
    "attend_one_query",
    "attend_with_prefix",
    "build_cross_mask",
    "build_segment_mask",
    "build_self_mask",
    "segment_positions",
]
