"""The transformer block (self-attention, optional cross-attention, feed-forward) and a stack of them.

Pre-norm (GPT-2, Llama, T5, ViT): `x + f(norm(x))` for each sub-layer, and the stack ends with a final norm.
Post-norm (the original transformer, Marian, the seed notes' "attention, normalisation, feed forward,
normalisation"): `norm(x + f(x))`, no final norm.
"""

from __future__ import annotations

from torch import Tensor, nn

from gensys.nn.attention import Attention
from gensys.nn.cache import KVCache
from gensys.nn.layers import MLP, make_norm


class TransformerBlock(nn.Module):
    """One layer: attn (+ cross_attn) + mlp, each with its norm (attn_norm, cross_norm, mlp_norm)."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_ff: int,
        *,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        activation: str = "gelu",
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        pre_norm: bool = True,
        cross_attention: bool = False,
        memory_dim: int | None = None,
        attn_bias: bool = True,
        mlp_bias: bool = True,
        dropout: float = 0.0,
        attn_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.attn_norm = make_norm(norm, dim, norm_eps)
        self.attn = Attention(
            dim,
            n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            bias=attn_bias,
            dropout=dropout,
            scale=attn_scale,
        )
        if cross_attention:
            self.cross_norm = make_norm(norm, dim, norm_eps)
            self.cross_attn = Attention(
                dim,
                n_heads,
                head_dim=head_dim,
                kv_dim=memory_dim,
                bias=attn_bias,
                dropout=dropout,
                scale=attn_scale,
            )
        else:
            self.cross_norm = self.cross_attn = None
        self.mlp_norm = make_norm(norm, dim, norm_eps)
        self.mlp = MLP(dim, d_ff, activation, bias=mlp_bias)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _sublayer(self, x: Tensor, norm: nn.Module, f) -> Tensor:
        if self.pre_norm:
            return x + self.drop(f(norm(x)))
        return norm(x + self.drop(f(x)))

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        bias: Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, D) -> (B, T, D). `memory_mask` is the (B, 1, 1, S) boolean cross-attention mask."""
        x = self._sublayer(
            x,
            self.attn_norm,
            lambda h: self.attn(
                h, mask=mask, is_causal=is_causal, rope=rope, bias=bias, cache=cache, layer=layer
            ),
        )
        if self.cross_attn is not None:
            x = self._sublayer(
                x,
                self.cross_norm,
                lambda h: self.cross_attn(h, memory=memory, mask=memory_mask, cache=cache, layer=layer),
            )
        return self._sublayer(x, self.mlp_norm, self.mlp)


class Stack(nn.Module):
    """`blocks` (an nn.ModuleList, so the trainer can wrap each for checkpointing) and a final `norm`."""

    def __init__(self, n_layers: int, final_norm: nn.Module | None, **block_kwargs) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(**block_kwargs) for _ in range(n_layers))
        self.norm = final_norm if final_norm is not None else nn.Identity()

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        """Run every block with the same keyword arguments (mask, cache, memory, ...); block i uses slot i."""
        for i, block in enumerate(self.blocks):
            x = block(x, layer=i, **kwargs)
        return self.norm(x)


__all__ = ["Stack", "TransformerBlock"]
