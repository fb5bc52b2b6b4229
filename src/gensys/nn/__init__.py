"""gensys.nn: shared building blocks (attention, KV cache, positions, norms, MLP, blocks, image encoders)."""

from gensys.nn.attention import Attention, attend_math, build_cross_mask, build_self_mask
from gensys.nn.block import Stack, TransformerBlock
from gensys.nn.cache import KVCache, expand_rows
from gensys.nn.layers import MLP, RMSNorm, make_norm
from gensys.nn.positions import (
    Learned2DPositions,
    LearnedPositions,
    RelativePositionBias,
    RotaryEmbedding,
    apply_rotary,
    positions_from_mask,
    sinusoidal,
    sinusoidal_2d,
)
from gensys.nn.vision import CNNEncoder, ViTEncoder

__all__ = [
    "MLP",
    "Attention",
    "CNNEncoder",
    "KVCache",
    "Learned2DPositions",
    "LearnedPositions",
    "RMSNorm",
    "RelativePositionBias",
    "RotaryEmbedding",
    "Stack",
    "TransformerBlock",
    "ViTEncoder",
    "apply_rotary",
    "attend_math",
    "build_cross_mask",
    "build_self_mask",
    "expand_rows",
    "make_norm",
    "positions_from_mask",
    "sinusoidal",
    "sinusoidal_2d",
]
