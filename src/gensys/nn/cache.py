"""Key/value cache for incremental decoding.

One object per generation call holds, for every layer, the self-attention keys/values that grow by one step
at a time and (for encoder-decoder models) the cross-attention keys/values that are computed once from the
encoder output. Buffers are preallocated and doubled when full, so appending a token costs a copy of one
token, not of the whole history (a concatenating cache costs O(T^2) copies over a generation).

Decoding strategies only ever call `reorder` (beam search picks which hypothesis each row continues),
`expand` (encode once, then repeat each row for n beams / n samples) and read `length`.

`expand(n, share_prefix=True)` does not copy the prompt's keys/values n times: they become a read-only
*prefix* of shape (B, H_kv, L_prompt, D) that the n rows of each prompt share, and only the tokens generated
afterwards live in per-row buffers (B*n rows). Attention then reads each prompt's keys once per group of rows
(`attend_with_prefix`), and beam search's reorder moves generated tokens only, never the prompt.
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
        # Shared prompt keys/values (B, H_kv, L_prompt, D) per layer, and how many rows share each one.
        self.prefix: list[tuple[Tensor, Tensor] | None] = [None] * n_layers
        self.group = 1

    @property
    def prefix_length(self) -> int:
        """Positions held in the shared prefix (0 unless `expand(n, share_prefix=True)` was called)."""
        first = self.prefix[0]
        return 0 if first is None else first[0].shape[2]

    @property
    def length(self) -> int:
        """Number of cached self-attention positions, shared prefix included (same for every layer once a
        step has finished)."""
        return self.prefix_length + self._len[0]

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

    def keys_values(self, layer: int) -> tuple[Tensor, Tensor]:
        """Views of `layer`'s valid self-attention keys and values (B, H_kv, T, D), shared prefix excluded."""
        kb, vb, n = self._k[layer], self._v[layer], self._len[layer]
        if kb is None or vb is None:
            raise ValueError(f"layer {layer} has no cached keys")
        return kb[:, :, :n], vb[:, :, :n]

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

    def expand(self, n: int, share_prefix: bool = False) -> None:
        """Repeat every row n times in place (row b becomes rows b*n .. b*n+n-1).

        With `share_prefix` the self-attention entries cached so far are not repeated: they become the shared
        prefix of rows b*n .. b*n+n-1 (see the module docstring); later `reorder`s must keep every row within
        its group, as beam search does. Cross-attention entries are repeated either way.
        """
        if self.prefix[0] is not None:
            raise ValueError("this cache already shares a prefix; it cannot be expanded again")
        if not share_prefix or n == 1 or self._k[0] is None:
            self._map(lambda t: t.repeat_interleave(n, dim=0))
            return
        self.prefix = [
            None if kb is None else (kb[:, :, :m], vb[:, :, :m])  # type: ignore[index]
            for kb, vb, m in zip(self._k, self._v, self._len)
        ]
        self.group = n
        # Generated tokens start small: a reorder gathers whole buffers, so spare capacity is copied too.
        self.initial_capacity = min(self.initial_capacity, 16)
        self._k, self._v, self._len = [None] * self.n_layers, [None] * self.n_layers, [0] * self.n_layers
        self._spare_k, self._spare_v = [None] * self.n_layers, [None] * self.n_layers
        self.cross = [
            None if c is None else (c[0].repeat_interleave(n, 0), c[1].repeat_interleave(n, 0))
            for c in self.cross
        ]

    def crop(self, length: int) -> None:
        """Forget positions >= length (e.g. when a user edits text before the cursor)."""
        if length < self.prefix_length:
            raise ValueError(
                f"cannot crop to {length} positions inside a shared prefix of {self.prefix_length}"
            )
        length -= self.prefix_length
        self._len = [min(n, length) for n in self._len]

    def nbytes(self) -> int:
        """Bytes of valid cached keys/values (for memory reports)."""
        total = 0
        for kb, n in zip(self._k, self._len):
            if kb is not None:
                per_pos = kb[:, :, :1].numel() * kb.element_size()
                total += 2 * per_pos * n
        for pre in self.prefix:
            if pre is not None:
                total += pre[0].numel() * pre[0].element_size() + pre[1].numel() * pre[1].element_size()
        for c in self.cross:
            if c is not None:
                total += c[0].numel() * c[0].element_size() + c[1].numel() * c[1].element_size()
        return total


def stack_left_padded(caches: list[KVCache], capacity: int = 0) -> tuple[KVCache, Tensor]:
    """One batch cache from single-row caches of different lengths, each left-padded to the longest.

    Returns the new cache (rows in the order given; the inputs are not modified) and the attention mask
    (B, L_max), True at real positions. Keys were rotated / computed at their rows' own positions, so
    decoding goes on with per-row positions `mask.sum(1)` and this mask (as for left-padded prompts).
    `capacity` reserves room for that many more positions without a regrowth copy. Self-attention only:
    a cache with cross-attention entries is refused (stacking encoder outputs needs their masks too).
    """
    if not caches:
        raise ValueError("no caches to stack")
    n_layers = caches[0].n_layers
    for c in caches:
        if c.n_layers != n_layers:
            raise ValueError("caches of different depths cannot be stacked")
        if any(x is not None for x in c.cross):
            raise ValueError("stacking caches with cross-attention entries is not supported")
        if c._k[0] is None or c._k[0].shape[0] != 1:
            raise ValueError("stack_left_padded takes non-empty caches of one row each")
    lengths = [c.length for c in caches]
    longest = max(lengths)
    out = KVCache(n_layers, max(caches[0].initial_capacity, longest + capacity))
    for layer in range(n_layers):
        ref = caches[0]._k[layer]
        assert ref is not None
        shape = (len(caches), ref.shape[1], longest + capacity, ref.shape[3])
        kb, vb = ref.new_zeros(shape), ref.new_zeros(shape)  # zeros, not garbage: pads are masked anyway
        for row, (c, n) in enumerate(zip(caches, lengths)):
            kb[row, :, longest - n : longest] = c._k[layer][0, :, :n]  # type: ignore[index]
            vb[row, :, longest - n : longest] = c._v[layer][0, :, :n]  # type: ignore[index]
        out._k[layer], out._v[layer], out._len[layer] = kb, vb, longest
    device = caches[0]._k[0].device  # type: ignore[union-attr]
    pads = torch.tensor([longest - n for n in lengths], device=device)
    mask = torch.arange(longest, device=device)[None, :] >= pads[:, None]  # (B, L_max)
    return out, mask


def expand_rows(t: Tensor | None, n: int) -> Tensor | None:
    """Repeat each row of a batch-first tensor n times (for masks/positions alongside `KVCache.expand`)."""
    return None if t is None else t.repeat_interleave(n, dim=0)


__all__ = ["KVCache", "expand_rows", "stack_left_padded"]
