"""A decoding step of fixed shape over preallocated key/value buffers (the "static cache" decode path).

`KVCache` grows by Python bookkeeping (lengths, doubling, prefixes) and the model's modules run one call each
per step: at 1-8 rows a step is mostly call overhead, not arithmetic (benchmarks/README_generate.md). Here one
function runs the whole step for one new token per row:

    logits (N, V) = step(tokens (N,))

over per-layer buffers (N, H_kv, capacity, D) that never change shape. Each step writes its keys/values into
cache slot `slot` (one slot for all rows; a row's rotary/learned *position* is its own) and attends over all
`capacity` slots with a mask of the valid ones, so every step has the same shapes. That makes the step one
graph for `torch.compile` (`compile=True`: compiled once per (rows, capacity), then reused), and it is faster
than the module path even uncompiled. The numerics are the model's own: norms, activations, rotary and the
embedding are the model's modules and functions, and the matrices are the packed decoding copies of
`packed_linear` (the same weights in (in, out) layout), and attention is `attend_one_query` with a bias
that masks unused slots. What is written out here is the slot write and the residual wiring of
`TransformerBlock` (pre- or post-norm).

A model offers this path through `step_spec()` -> `StepSpec` (or None where a feature is not covered, e.g.
relative position biases); `gensys.generate` builds a `StaticDecoder` from it after the usual prefill.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gensys.nn.attention import attend_one_query
from gensys.nn.block import TransformerBlock
from gensys.nn.cache import KVCache
from gensys.nn.layers import packed_weights
from gensys.nn.positions import RotaryEmbedding, apply_rotary


@dataclass
class StepSpec:
    """What a model tells `StaticDecoder` about its decoder.

    embed: (ids (N, 1), positions (N, 1)) -> (N, 1, D), the input embedding with positions (no dropout at
    decode time); blocks: the decoder's TransformerBlocks in order; final_norm: applied after the last block
    (nn.Identity for post-norm stacks); head_owner / head: the output projection, packed under
    `head_owner`'s "lm_head" entry as the module path does; head_scale multiplies the final hidden state
    (T5's tied-output scale); rope: rotary tables when the model rotates q and k.
    """

    embed: Callable[[Tensor, Tensor], Tensor]
    blocks: Sequence[TransformerBlock]
    final_norm: nn.Module
    head_owner: nn.Module
    head: nn.Linear
    head_scale: float = 1.0
    rope: RotaryEmbedding | None = None


@dataclass
class _Layer:
    block: TransformerBlock
    qkv: tuple[Tensor, Tensor | None]
    o: tuple[Tensor, Tensor | None]
    cross_q: tuple[Tensor, Tensor | None] | None
    cross_o: tuple[Tensor, Tensor | None] | None
    up: tuple[Tensor, Tensor | None]  # gate|up for gated MLPs
    down: tuple[Tensor, Tensor | None]
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scale: float


def _mm(x: Tensor, wb: tuple[Tensor, Tensor | None]) -> Tensor:
    w, b = wb
    return torch.mm(x, w) if b is None else torch.addmm(b, x, w)  # (N, out)


def _packed(layers: Sequence[_Layer], head: tuple[Tensor, Tensor | None] | None) -> list[Tensor | None]:
    """Every packed weight a decoder multiplies by (their identities tell whether it is current)."""
    mats = [head[0] if head is not None else None]
    for layer in layers:
        for wb in (layer.qkv, layer.o, layer.cross_q, layer.cross_o, layer.up, layer.down):
            mats.append(None if wb is None else wb[0])
    return mats


def _sublayer(block: TransformerBlock, x: Tensor, norm: nn.Module, f: Callable[[Tensor], Tensor]) -> Tensor:
    """TransformerBlock._sublayer at decode time (dropout is off)."""
    return x + f(norm(x)) if block.pre_norm else norm(x + f(x))


class StaticDecoder:
    """The fixed-shape decode step of one model (its packed weights and, with `compile=True`, the compiled
    step); it keeps no per-call state, so one instance serves every call on the model.

    Build it inside `decoding(model)` (the packed weights come from there). After a prefill into a `KVCache`,
    `state = load(cache, mask, capacity)` copies the prompt's keys/values (and cross-attention keys/values)
    into a new `StaticState`; then `step(state, tokens)` per token, and `state.reorder(index)` /
    `state.expand(n)` as beam search and sampling need them.
    """

    MAX_GRAPHS = 16  # compiled layouts kept per decoder (see `_compiled_for`)

    def __init__(self, spec: StepSpec, *, compile: bool = False) -> None:
        self.spec = spec
        self.layers = [self._layer(b) for b in spec.blocks]
        head = packed_weights(spec.head_owner, "lm_head", (spec.head,))
        if head is None:
            raise ValueError("the output head is not a plain nn.Linear: no static decode step")
        self.head = head
        self.compile = compile
        # compile=True: one Inductor-compiled step per input layout (see `_compiled_for`).
        self._graphs: dict[tuple, Callable[..., Tensor]] = {}

    def __deepcopy__(self, memo: dict) -> None:
        # Kept on its model between calls (gensys.generate.stepper.static_decoder): a deep copy of the model
        # (a reference policy, an EMA) builds its own from its own weights instead of copying this one.
        return None

    def same_weights(self, spec: StepSpec) -> bool:
        """True while `spec`'s packed weights are the very tensors this decoder was built on (they are rebuilt
        when the model's weights change), so a cached decoder (and its compiled step) can be reused."""
        if [layer.block for layer in self.layers] != list(spec.blocks):
            return False
        head = packed_weights(spec.head_owner, "lm_head", (spec.head,))
        try:
            layers = [self._layer(b) for b in spec.blocks]  # lookups of the packed copies, no new packing
        except ValueError:
            return False
        now, built = _packed(layers, head), _packed(self.layers, self.head)
        return len(now) == len(built) and all(a is b for a, b in zip(now, built))

    @staticmethod
    def _layer(block: TransformerBlock) -> _Layer:
        a, m = block.attn, block.mlp

        def packed(
            owner: nn.Module, name: str, linears: tuple[nn.Module, ...]
        ) -> tuple[Tensor, Tensor | None]:
            wb = packed_weights(owner, name, linears)
            if wb is None:
                raise ValueError(
                    f"{type(owner).__name__}.{name} is not plain nn.Linear: no static decode step"
                )
            return wb

        if a.dropout and block.training:
            raise ValueError("static decoding runs in eval mode only")
        mlp_in = (m.up_proj,) if m.gate_proj is None else (m.gate_proj, m.up_proj)
        cross = block.cross_attn
        return _Layer(
            block=block,
            qkv=packed(a, "qkv", a._qkv()),
            o=packed(a, "o", (a.o_proj,)),
            cross_q=None if cross is None else packed(cross, "q", (cross.q_proj,)),
            cross_o=None if cross is None else packed(cross, "o", (cross.o_proj,)),
            up=packed(m, "up" if m.gate_proj is None else "gate_up", mlp_in),
            down=packed(m, "down", (m.down_proj,)),
            n_heads=a.q_proj.out_features // a.head_dim,
            n_kv_heads=a.k_proj.out_features // a.head_dim,
            head_dim=a.head_dim,
            scale=a.head_dim**-0.5 if a.scale is None else a.scale,
        )

    def load(
        self, cache: KVCache, mask: Tensor | None, capacity: int, memory_mask: Tensor | None = None
    ) -> StaticState:
        """A new decoding state from a prefilled `cache` (B rows, length L, no shared prefix) with buffers of
        `capacity` slots. mask: (B, L) bool, True at real prompt tokens (None: all real). memory_mask: (B, S),
        1 = real source token, for cross-attention (None: all real)."""
        cross = any(layer.cross_q is not None for layer in self.layers)
        return StaticState(cache, len(self.layers), mask, capacity, memory_mask, cross)

    def step(self, state: StaticState, tokens: Tensor) -> Tensor:
        """Logits (N, V) for one new token per row, tokens (N,); appends to `state`."""
        if state.slot >= state.capacity:
            raise ValueError(f"static cache full: {state.capacity} slots")
        slot = torch.full((1,), state.slot, dtype=torch.long, device=tokens.device)
        state.valid[:, state.slot] = True  # this step's own slot becomes visible to every row
        if self.compile:
            flat = [tokens.contiguous(), state.positions, slot, state.valid, *state.k, *state.v]
            flat += [*state.cross_k, *state.cross_v] + (
                [state.cross_bias] if state.cross_bias is not None else []
            )
            if state.compiled is None:  # first step, or the state's shapes changed (expand, reorder, ...)
                state.compiled = self._compiled_for(flat, len(state.cross_k), state.cross_bias is not None)
            logits = state.compiled(*flat)
        else:
            args = (
                tokens,
                state.positions,
                slot,
                state.valid,
                state.k,
                state.v,
                state.cross_k,
                state.cross_v,
            )
            logits = self._step(*args, state.cross_bias)
        state.positions += 1  # in place: `positions` is this state's own tensor (reorder/expand copy it)
        state.slot += 1
        return logits

    def _compiled_for(self, flat: list[Tensor], n_cross: int, has_bias: bool) -> Callable[..., Tensor]:
        """The step compiled for inputs laid out like `flat` (shapes, strides, dtypes), built on first use.

        Not `torch.compile`: the step is traced once to an FX graph (`make_fx`, weights as constants) and
        compiled by Inductor directly. Called per step, that graph runs no Dynamo guards or frame hooks
        (~130 µs of a 2 ms beam-search step with `torch.compile`): the layout key here is the only check, and
        a state looks it up once per layout, not per step. The keys/values buffers are updated in place by
        the compiled code, as by the eager step.
        """
        key = (n_cross, has_bias, *((t.shape, t.stride(), t.dtype, t.device) for t in flat))
        fn = self._graphs.get(key)
        if fn is not None:
            return fn
        from torch.fx.experimental.proxy_tensor import make_fx

        n_layers = len(self.layers)

        def step(tokens: Tensor, positions: Tensor, slot: Tensor, valid: Tensor, *rest: Tensor) -> Tensor:
            ks, vs = list(rest[:n_layers]), list(rest[n_layers : 2 * n_layers])
            cross = rest[2 * n_layers :]
            cks, cvs = list(cross[:n_cross]), list(cross[n_cross : 2 * n_cross])
            return self._step(
                tokens, positions, slot, valid, ks, vs, cks, cvs, cross[-1] if has_bias else None
            )

        if len(self._graphs) >= self.MAX_GRAPHS:
            # Shapes that keep changing (a server's varying batch sizes) would compile without end (seconds
            # and memory each): past the limit a new layout runs the same step eagerly, as torch.compile does
            # past its recompile limit.
            return step
        with torch.no_grad():
            # Tracing runs the step on these very tensors: it writes this step's keys/values into their slot,
            # which the compiled call then writes again with the same values (the step is idempotent).
            graph = make_fx(step)(*flat)
            fn = torch._inductor.compile(graph, flat)
        self._graphs[key] = fn
        return fn

    # ----------------------------------------------------------------------------------------------------
    # the step

    def _step(
        self,
        tokens: Tensor,
        positions: Tensor,
        slot: Tensor,
        valid: Tensor,
        ks: list[Tensor],
        vs: list[Tensor],
        cross_ks: list[Tensor],
        cross_vs: list[Tensor],
        cross_bias: Tensor | None,
    ) -> Tensor:
        spec = self.spec
        n = tokens.shape[0]
        self_bias = _bias(valid, ks[0].dtype)  # (N, 1, 1, capacity), inside the (compiled) step
        x = spec.embed(tokens[:, None], positions[:, None])[:, 0]  # (N, D)
        rope = None
        if spec.rope is not None:
            cos, sin = spec.rope(positions[:, None])  # (N, 1, 1, R/2)
            rope = (cos, sin)
        for i, layer in enumerate(self.layers):
            blk = layer.block
            h, h_kv, d = layer.n_heads, layer.n_kv_heads, layer.head_dim

            def self_attn(y: Tensor, layer=layer, i=i, h=h, h_kv=h_kv, d=d) -> Tensor:
                qkv = _mm(y, layer.qkv)  # (N, (H + 2 H_kv) D)
                qk = qkv[:, : (h + h_kv) * d].reshape(n, h + h_kv, 1, d)  # (N, H + H_kv, 1, D)
                if rope is not None:
                    qk = apply_rotary(qk, *rope)
                q, k = qk[:, :h], qk[:, h:]  # (N, H, 1, D), (N, H_kv, 1, D)
                v = qkv[:, (h + h_kv) * d :].reshape(n, h_kv, 1, d)
                ks[i].index_copy_(2, slot, k)  # this step's keys/values into slot `slot`, in place
                vs[i].index_copy_(2, slot, v)
                out = attend_one_query(q, ks[i], vs[i], scale=layer.scale, bias=self_bias)  # (N, H, 1, D)
                return _mm(out.reshape(n, h * d), layer.o)

            x = _sublayer(blk, x, blk.attn_norm, self_attn)
            if layer.cross_q is not None:

                def cross_attn(y: Tensor, layer=layer, i=i, h=h, d=d) -> Tensor:
                    b = cross_ks[i].shape[0]
                    g = n // b  # rows (beams / samples) per source
                    # The g rows of one source act as g query heads per cross-attention head, so each
                    # source's keys are read once: (B, H * g, 1, D) against (B, H, S, D).
                    q = _mm(y, layer.cross_q).view(b, g, h, d).transpose(1, 2).reshape(b, h * g, 1, d)
                    out = attend_one_query(q, cross_ks[i], cross_vs[i], scale=layer.scale, bias=cross_bias)
                    out = out.view(b, h, g, d).transpose(1, 2).reshape(n, h * d)  # (N, H * D)
                    return _mm(out, layer.cross_o)

                x = _sublayer(blk, x, blk.cross_norm, cross_attn)

            def mlp(y: Tensor, layer=layer, blk=blk) -> Tensor:
                up = _mm(y, layer.up)  # (N, F) or (N, 2F) for gate|up
                if blk.mlp.gate_proj is None:
                    act = blk.mlp.act(up)
                else:
                    f = up.shape[1] // 2
                    act = blk.mlp.act(up[:, :f]) * up[:, f:]
                return _mm(act, layer.down)

            x = _sublayer(blk, x, blk.mlp_norm, mlp)
        x = spec.final_norm(x)
        if spec.head_scale != 1.0:
            x = x * spec.head_scale
        return _mm(x, self.head)  # (N, V)


class StaticState:
    """The buffers of one generation call on the fixed-shape path (one per call, so concurrent calls on one
    model never share them): per-layer keys/values (N, H_kv, capacity, D), the valid-slot mask (N, capacity),
    each row's next position, the next slot, and cross-attention keys/values shared per source."""

    def __init__(
        self,
        cache: KVCache,
        n_layers: int,
        mask: Tensor | None,
        capacity: int,
        memory_mask: Tensor | None,
        cross: bool,
    ) -> None:
        if cache.prefix_length:
            raise ValueError("load a cache before expand(): shared prefixes are not supported here")
        length = cache.length
        if capacity < length + 1:
            raise ValueError(f"capacity {capacity} leaves no room after a {length}-token prompt")
        self.k, self.v = [], []
        for i in range(n_layers):
            k, v = cache.keys_values(i)  # (B, H_kv, L, D)
            kb = k.new_zeros(k.shape[0], k.shape[1], capacity, k.shape[3])
            vb = v.new_zeros(kb.shape)
            kb[:, :, :length], vb[:, :, :length] = k, v
            self.k.append(kb)
            self.v.append(vb)
        b, dev = self.k[0].shape[0], self.k[0].device
        self.valid = torch.zeros(b, capacity, dtype=torch.bool, device=dev)
        self.valid[:, :length] = True if mask is None else mask.bool()
        self.positions = self.valid.sum(1)  # (B,) = real tokens so far = next position
        self.slot = length
        self.cross_k, self.cross_v, self.cross_bias = [], [], None
        if cross:
            for i in range(n_layers):
                kv = cache.get_cross(i)
                if kv is None:
                    raise ValueError(f"layer {i} has no cross-attention keys: prefill with the memory first")
                self.cross_k.append(kv[0])
                self.cross_v.append(kv[1])
            s = self.cross_k[0].shape[2]
            real = (
                torch.ones(b, s, dtype=torch.bool, device=dev) if memory_mask is None else memory_mask.bool()
            )
            self.cross_bias = _bias(real, self.cross_k[0].dtype)
        self.group = 1
        self.compiled: Callable[..., Tensor] | None = None  # the compiled step for these buffers' layout
        self._group_ids: Tensor | None = None
        self._group_ids_of = 0

    @property
    def capacity(self) -> int:
        """Slots per row (prompt + room for new tokens)."""
        return self.k[0].shape[2]

    def _rows(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.compiled = None  # new shapes: the next step looks its compiled graph up again
        self.k = [fn(t) for t in self.k]
        self.v = [fn(t) for t in self.v]
        self.valid = fn(self.valid)
        self.positions = fn(self.positions)

    def _cross(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.compiled = None
        self.cross_k = [fn(t) for t in self.cross_k]
        self.cross_v = [fn(t) for t in self.cross_v]
        if self.cross_bias is not None:
            self.cross_bias = fn(self.cross_bias)

    def _groups(self) -> Tensor:
        """(N,) the source of each row, row // group (kept: beam search asks at nearly every step)."""
        n = self.valid.shape[0]
        cached = self._group_ids
        if cached is None or cached.shape[0] != n or self._group_ids_of != self.group:
            cached = torch.arange(n, device=self.valid.device) // self.group
            self._group_ids, self._group_ids_of = cached, self.group
        return cached

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (N_new,) (beam search's parents)."""
        n = self.valid.shape[0]
        # (Decoder-only states have no encoder keys/values to keep or move.)
        if self.cross_k and (index.shape[0] != n or not torch.equal(index // self.group, self._groups())):
            # Rows move across sources: give every row its own copy of the encoder's keys/values again.
            group = self.group
            self._cross(lambda t: t.repeat_interleave(group, dim=0).index_select(0, index))
            self.group = 1
        if index.shape[0] != n:
            self._rows(lambda t: t.index_select(0, index))
            return
        # Same row count (beam search): gather only the filled slots, in place. The buffers keep their
        # identity and the empty capacity is not copied (a whole-buffer gather moved up to 2x the data).
        filled = self.slot
        for buf in (*self.k, *self.v):
            buf[:, :, :filled] = buf[:, :, :filled].index_select(0, index)
        self.valid = self.valid.index_select(0, index)
        self.positions = self.positions.index_select(0, index)

    def expand(self, n: int) -> None:
        """Repeat each row n times (rows b*n .. b*n+n-1), after the prompt was computed once."""
        self._rows(lambda t: t.repeat_interleave(n, dim=0))
        self.group *= n


def _bias(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, T) bool -> additive (N, 1, 1, T) attention bias in `dtype`, 0 where valid and -inf elsewhere."""
    zero = torch.zeros((), dtype=dtype, device=valid.device)
    return torch.where(valid, zero, float("-inf"))[:, None, None, :]


__all__ = ["StaticDecoder", "StaticState", "StepSpec"]
