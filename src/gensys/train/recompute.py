"""Activation checkpointing per transformer block, applied from outside the model.

Each block's forward is replaced (on the instance, so parameter names and state-dict keys do not change) by a
non-reentrant `torch.utils.checkpoint` call: the block keeps only its inputs during forward and recomputes its
activations in backward. The RNG state is replayed for the recomputation, so dropout masks match and the
gradients equal those without checkpointing.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["apply_activation_checkpointing", "transformer_blocks"]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a gensys model: `model.blocks` (and `model.encoder.blocks` etc. for seq2seq)."""
    found: list[nn.Module] = []
    for name, module in model.named_modules():
        if name.split(".")[-1] == "blocks" and isinstance(module, nn.ModuleList | nn.ModuleDict):
            found.extend(module.values() if isinstance(module, nn.ModuleDict) else list(module))
    return found


def _checkpointed_forward(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Wrap every transformer block's forward in `torch.utils.checkpoint`; returns how many were wrapped."""
    n = 0
    for block in transformer_blocks(model):
        if getattr(block, "_gensys_recompute", False):
            continue
        block.forward = functools.partial(_checkpointed_forward, block.forward)
        block._gensys_recompute = True
        n += 1
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no `blocks` to checkpoint")
    return n
