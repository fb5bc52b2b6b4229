"""Key/value cache for incremental decoding.

One object per generation call holds, for every layer, the self-attention keys/values that grow by one step
at a time and (for encoder-decoder models) the cross-attention keys/values that are computed once from the
encoder output. Buffers are preallocated and doubled when full, so appending a token costs a copy of one
token, not of the whole history (a concatenating cache costs O(T^2) copies over a generation).

Decoding strategies only ever call `reorder` (beam search picks which hypothesis each row continues),
`expand` (encode once, then repeat each row for n beams / n samples) and read `length`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Per-layer self-attention (growing) and cross-attention (fixed) key/value tensors.

    Shapes: self-attention buffers are (B, H_kv, capacity, D_head) of which the first `length` positions are
    valid; cross-attention entries are (B, H_kv, S, D_head).
    """

    def __init__(self, n_layers: int, initial_capacity: int = 64) -> None:
        self.n_layers = n_layers
        self.initial_capacity = initial_capacity
        self._k: list[Tensor | None] = [None] * n_layers
        self._v: list[Tensor | None] = [None] * n_layers
        self._len: list[int] = [0] * n_layers
        self.cross: list[tuple[Tensor, Tensor] | None] = [None] * n_layers
        # Buffers the previous `reorder` moved out of: the next reorder gathers into them.
        self._spare_k: list[Tensor | None] = [None] * n_layers
        self._spare_v: list[Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """Number of cached self-attention positions (same for every layer once a step has finished)."""
        return self._len[0]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append `k`, `v` (B, H_kv, T_new, D) to `layer`; return all valid keys/values (B, H_kv, T, D)."""
        kb, vb, n = self._k[layer], self._v[layer], self._len[layer]
        t_new = k.shape[2]
        if kb is None:
            cap = max(self.initial_capacity, t_new)
            kb = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            vb = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
        elif n + t_new > kb.shape[2]:
            cap = max(2 * kb.shape[2], n + t_new)
            kb2 = kb.new_empty(kb.shape[0], kb.shape[1], cap, kb.shape[3])
            vb2 = vb.new_empty(vb.shape[0], vb.shape[1], cap, vb.shape[3])
            kb2[:, :, :n] = kb[:, :, :n]
            vb2[:, :, :n] = vb[:, :, :n]
            kb, vb = kb2, vb2
        kb[:, :, n : n + t_new] = k
        vb[:, :, n : n + t_new] = v
        self._k[layer], self._v[layer], self._len[layer] = kb, vb, n + t_new
        return kb[:, :, : n + t_new], vb[:, :, : n + t_new]

    def get_cross(self, layer: int) -> tuple[Tensor, Tensor] | None:
        return self.cross[layer]

    def set_cross(self, layer: int, k: Tensor, v: Tensor) -> None:
        self.cross[layer] = (k, v)

    def _map(self, fn) -> None:
        self._k = [None if t is None else fn(t) for t in self._k]
        self._v = [None if t is None else fn(t) for t in self._v]
        self.cross = [None if c is None else (fn(c[0]), fn(c[1])) for c in self.cross]
        self._spare_k, self._spare_v = [None] * self.n_layers, [None] * self.n_layers

    def reorder(self, index: Tensor, cross: bool = True) -> None:
        """Keep rows `index` (LongTensor (B_new,)) of every tensor: beam search's parent selection.

        Each self-attention buffer is gathered whole, in one pass, into a second buffer kept from the previous
        reorder (beam search reorders nearly every step: no allocation and no intermediate copy; the unused
        capacity is copied too, at most as much again). Views returned by `update` before a reorder must not
        be kept past the next one. With
        `cross=False` the cross-attention entries are left alone: beams of one source share the same encoder
        output, so a reorder within each source's group of beams does not change them.
        """
        for i, (kb, vb) in enumerate(zip(self._k, self._v)):
            if kb is None:
                continue
            self._k[i], self._spare_k[i] = self._select_rows(kb, index, self._spare_k[i]), kb
            self._v[i], self._spare_v[i] = self._select_rows(vb, index, self._spare_v[i]), vb
        if cross:
            self.cross = [
                None if c is None else (c[0].index_select(0, index), c[1].index_select(0, index))
                for c in self.cross
            ]

    @staticmethod
    def _select_rows(buf: Tensor, index: Tensor, spare: Tensor | None) -> Tensor:
        """buf.index_select(0, index), written into `spare` when it has the right shape."""
        shape = (index.shape[0], *buf.shape[1:])
        if spare is None or spare.shape != shape or spare.dtype != buf.dtype or spare.device != buf.device:
            spare = buf.new_empty(shape)
        return torch.index_select(buf, 0, index, out=spare)

    def expand(self, n: int) -> None:
        """Repeat every row n times in place (row b becomes rows b*n .. b*n+n-1)."""
        self._map(lambda t: t.repeat_interleave(n, dim=0))

    def crop(self, length: int) -> None:
        """Forget positions >= length (e.g. when a user edits text before the cursor)."""
        self._len = [min(n, length) for n in self._len]

    def nbytes(self) -> int:
        """Bytes of valid cached keys/values (for memory reports)."""
        total = 0
        for kb, n in zip(self._k, self._len):
            if kb is not None:
                per_pos = kb[:, :, :1].numel() * kb.element_size()
                total += 2 * per_pos * n
        for c in self.cross:
            if c is not None:
                total += c[0].numel() * c[0].element_size() + c[1].numel() * c[1].element_size()
        return total


def expand_rows(t: Tensor | None, n: int) -> Tensor | None:
    """Repeat each row of a batch-first tensor n times (for masks/positions alongside `KVCache.expand`)."""
    return None if t is None else t.repeat_interleave(n, dim=0)


__all__ = ["KVCache", "expand_rows"]
