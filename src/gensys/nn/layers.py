"""Block parts: normalisation layers and the position-wise feed-forward network.

The feed-forward is `down_proj(act(up_proj(x)))` (ReLU as in the original transformer, GELU as in GPT-2/ViT)
or gated, `down_proj(act(gate_proj(x)) * up_proj(x))` (SwiGLU as in Llama, GEGLU as in T5 v1.1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu")
GATED = {"swiglu": "silu", "geglu": "gelu_tanh"}


class RMSNorm(nn.Module):
    """Root-mean-square norm (no centring, no bias): `w * x / sqrt(mean(x^2) + eps)`.

    Statistics are taken in float32 even for half-precision inputs (a bf16 mean of squares loses too much).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """`"layernorm"` (with bias) or `"rmsnorm"`."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; expected 'layernorm' or 'rmsnorm'")


def activation_fn(name: str) -> nn.Module:
    """The element-wise non-linearity named `name` (gated names give the gate's activation)."""
    name = GATED.get(name, name)
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()  # exact erf form (BERT, ViT)
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


class MLP(nn.Module):
    """Position-wise feed-forward: up_proj -> activation (-> * gate) -> down_proj."""

    def __init__(
        self, dim: int, hidden: int, activation: str = "gelu", bias: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        # Only gated activations have a gate; its name is fixed because tensor parallelism keys on it.
        self.gate_proj = nn.Linear(dim, hidden, bias=bias) if activation in GATED else None
        self.act = activation_fn(activation)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_proj is None:
            h = self.act(self.up_proj(x))
        else:
            h = self.act(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(self.dropout(h))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2 style init: normal(0, std) for linear and embedding weights, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm | RMSNorm):
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


__all__ = ["ACTIVATIONS", "MLP", "RMSNorm", "activation_fn", "init_weights", "make_norm"]
