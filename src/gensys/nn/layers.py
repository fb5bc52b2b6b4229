"""Block parts: normalisation layers and the position-wise feed-forward network.

The feed-forward is `down_proj(act(up_proj(x)))` (ReLU as in the original transformer, GELU as in GPT-2/ViT)
or gated, `down_proj(act(gate_proj(x)) * up_proj(x))` (SwiGLU as in Llama, GEGLU as in T5 v1.1).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu")
GATED = {"swiglu": "silu", "geglu": "gelu_tanh"}
# Inputs with at most this many rows (batch x time) take the decoding path of `packed_linear`.
DECODE_MAX_ROWS = 64
_PACKED, _LIVE = "_gensys_packed", "_gensys_decoding"  # plain attributes: never parameters or state


def _weights_key(linears: Sequence[nn.Module]) -> list[tuple[int, int, torch.dtype]]:
    """Identity and version of each weight / bias: any replacement or in-place update changes it."""
    return [(t.data_ptr(), t._version, t.dtype) for lin in linears for t in lin.parameters()]


@contextmanager
def decoding(model: nn.Module) -> Iterator[None]:
    """Let `model`'s small no-grad linear calls use packed weights inside this block (see `packed_linear`).

    The weights must not change inside the block (decoding never changes them). On entry, packed copies built
    by an earlier block are checked against the current weights (an optimizer step, `load_state_dict` or
    `.to()` in between makes them stale) and dropped if stale; on exit they are kept, so the next `generate`
    call does not pay for packing again. Re-entering (nested blocks) is harmless.
    """
    modules = [m for m in model.modules() if not m.__dict__.get(_LIVE)]
    for m in modules:
        packed = m.__dict__.get(_PACKED)
        if packed:
            children = {id(c) for c in m.children()}  # a replaced submodule makes its entry stale too
            m.__dict__[_PACKED] = {
                k: v
                for k, v in packed.items()
                if v is not None and all(id(c) in children for c in v[1]) and v[0] == _weights_key(v[1])
            }
        m.__dict__[_LIVE] = True
    try:
        yield
    finally:
        for m in modules:
            m.__dict__[_LIVE] = False


def packed_linear(x: Tensor, owner: nn.Module, name: str, linears: Sequence[nn.Module]) -> Tensor | None:
    """`cat([lin(x) for lin in linears], -1)` for a decoding step, or None where this path does not apply.

    A decoding step multiplies a few rows (batch x beams) by every weight matrix, and at that size the cost
    is call overhead and layout: MKL is up to 2x faster on a weight stored (in, out) than on nn.Linear's
    (out, in) (`x @ W^T` is a transposed GEMM; measured for 1-8 rows x 256-8000 columns, torch 2.13), and one
    matrix for q|k|v (or gate|up) is one call instead of three. So inside `decoding(model)`, without
    gradients and for at most `DECODE_MAX_ROWS` rows, this multiplies by a transposed, concatenated copy of
    the weights, kept on `owner` under `name` (a plain attribute: not a parameter, never in a state dict or
    checkpoint; one extra copy of the weights of the modules that decode). Anything other than plain
    nn.Linear modules (or modules with hooks) keeps the ordinary path (None). `linears` are direct
    submodules of `owner`, always the same ones for one `name`. x (..., in) -> (..., sum out).
    """
    if not owner.__dict__.get(_LIVE) or torch.is_grad_enabled():
        return None
    if x.numel() > DECODE_MAX_ROWS * x.shape[-1]:
        return None
    entry = packed_weights(owner, name, linears)
    if entry is None:
        return None
    weight, bias = entry
    rows = x.reshape(-1, x.shape[-1])  # (N, in)
    out = torch.mm(rows, weight) if bias is None else torch.addmm(bias, rows, weight)  # (N, out)
    return out.view(*x.shape[:-1], weight.shape[1])


def packed_weights(
    owner: nn.Module, name: str, linears: Sequence[nn.Module]
) -> tuple[Tensor, Tensor | None] | None:
    """The decoding-layout weight (in, sum out) and bias (sum out,) | None that `packed_linear` multiplies by,
    built on first use and kept on `owner` under `name` (checked for staleness by `decoding`); None when a
    module is not a plain nn.Linear (or has hooks). Valid inside `decoding(model)` only."""
    packed = owner.__dict__.setdefault(_PACKED, {})
    entry = packed.get(name, False)
    if entry is False:
        entry = None
        if all(type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks) for m in linears):
            with torch.no_grad():
                weight = torch.cat([m.weight for m in linears], dim=0).t().contiguous()  # (in, out)
                bias = None
                if any(m.bias is not None for m in linears):
                    bias = torch.cat(
                        [m.weight.new_zeros(m.out_features) if m.bias is None else m.bias for m in linears]
                    )  # (out,)
            entry = (_weights_key(linears), tuple(linears), weight, bias)
        packed[name] = entry
    return None if entry is None else (entry[2], entry[3])


class RMSNorm(nn.Module):
    """Root-mean-square norm (no centring, no bias): `w * x / sqrt(mean(x^2) + eps)`.

    Statistics are taken in float32 even for half-precision inputs (a bf16 mean of squares loses too much).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            # The same arithmetic in fewer ops (this runs twice per layer and decoding step): no no-op casts,
            # in-place scalar ops, and sum / n, which is what mean() computes after first turning n into a
            # tensor (bitwise equal).
            var = x.pow(2).sum(-1, keepdim=True).div_(x.shape[-1])  # (..., 1) mean of squares
            return self.weight * (x * var.add_(self.eps).rsqrt_())
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
            h = packed_linear(x, self, "up", (self.up_proj,))
            h = self.act(self.up_proj(x) if h is None else h)
        else:
            gate_up = packed_linear(x, self, "gate_up", (self.gate_proj, self.up_proj))  # (..., 2 * hidden)
            if gate_up is None:
                h = self.act(self.gate_proj(x)) * self.up_proj(x)
            else:
                hidden = gate_up.shape[-1] // 2
                h = self.act(gate_up[..., :hidden]) * gate_up[..., hidden:]
        h = self.dropout(h)
        out = packed_linear(h, self, "down", (self.down_proj,))
        return self.down_proj(h) if out is None else out


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


__all__ = [
    "ACTIVATIONS",
    "DECODE_MAX_ROWS",
    "MLP",
    "RMSNorm",
    "activation_fn",
    "decoding",
    "init_weights",
    "make_norm",
    "packed_linear",
    "packed_weights",
]
