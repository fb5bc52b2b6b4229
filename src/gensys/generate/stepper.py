"""Steppers: the one thing search strategies know about a model.

A stepper turns a model into four calls: `prefill(input_ids, attention_mask) -> logits (B, V)` for the last
prompt position, `step(tokens (N,)) -> logits (N, V)` for one new token per row, `reorder(index)` (beam
search keeps the rows `index`) and `expand(n)` (repeat each row n times after the prompt was computed once, so
beams and samples share one prefill). Decoder-only and encoder-decoder models differ only here; greedy,
sampling and beam search are written once against this protocol.

Left-padded prompts pass `attention_mask` (1 = real token); each row then gets its own positions
(`cumsum(mask) - 1`), so its result does not depend on how much padding its neighbours needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from gensys.nn.static_decode import StaticDecoder, StaticState


class Stepper(Protocol):
    """What greedy / sampling / beam search call; see the module docstring."""

    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor: ...

    def step(self, tokens: Tensor) -> Tensor: ...

    def reorder(self, index: Tensor) -> None: ...

    def expand(self, n: int) -> None: ...


# Prompts at least this long share one copy of their keys/values among their beams (KVCache.expand's
# share_prefix). Measured (benchmarks/README_generate.md, 9.6M Llama, 4 beams, 64 new tokens, 1 thread):
# a 32-token prompt decodes 12% slower shared, a 256-token one 8% faster; a batch of 8 Smart Compose drafts
# (~100-250 tokens, 4 beams, 10 tokens) 36% faster.
SHARE_PREFIX_MIN_TOKENS = 128


class PaddedRows:
    """Per-row attention mask and next position for left-padded batches (None while nothing is padded)."""

    def __init__(self, attention_mask: Tensor | None) -> None:
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # unpadded: let the model take its causal fast path
        self.mask = None if attention_mask is None else attention_mask.bool()  # (B, T)

    def prompt_positions(self) -> Tensor | None:
        if self.mask is None:
            return None
        return (self.mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T); pads get 0, they are masked anyway

    def next_step(self) -> tuple[Tensor | None, Tensor | None]:
        """Mask (N, T_past+1) and positions (N, 1) for one more real token per row."""
        if self.mask is None:
            return None, None
        positions = self.mask.sum(1, keepdim=True)  # (N, 1) = number of real tokens so far
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        return self.mask, positions

    def reorder(self, index: Tensor) -> None:
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)

    def expand(self, n: int) -> None:
        if self.mask is not None:
            self.mask = self.mask.repeat_interleave(n, dim=0)


def _new_cache(model: nn.Module) -> Any:
    if not hasattr(model, "new_cache"):
        raise TypeError(f"{type(model).__name__} has no new_cache(); decoding needs the KV-cache interface")
    return model.new_cache()


class DecoderOnlyStepper:
    """Stepper over a decoder-only LM: `model(ids, attention_mask=, positions=, cache=) -> logits`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.cache: Any = None
        self.rows = PaddedRows(None)

    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        self.cache = _new_cache(self.model)
        self.rows = PaddedRows(attention_mask)
        kwargs = dict(attention_mask=self.rows.mask, positions=self.rows.prompt_positions(), cache=self.cache)
        if hasattr(self.model, "hidden") and hasattr(self.model, "lm_head"):
            # Only the last position's logits are needed: skip the (T, V) head matmul over the whole prompt.
            h = self.model.hidden(input_ids, **kwargs)  # (B, T, D)
            return self.model.lm_head(h[:, -1]).float()  # (B, V)
        return self.model(input_ids, **kwargs)[:, -1].float()

    def step(self, tokens: Tensor) -> Tensor:
        mask, positions = self.rows.next_step()
        logits = self.model(tokens[:, None], attention_mask=mask, positions=positions, cache=self.cache)
        return logits[:, -1].float()  # (N, V)

    def reorder(self, index: Tensor) -> None:
        self.cache.reorder(index)
        self.rows.reorder(index)

    def expand(self, n: int) -> None:
        # A long prompt's keys/values stay one copy per prompt, shared by its n beams or samples (no copy
        # per beam at every reorder); a short one is repeated, as the grouped path has a fixed extra cost.
        self.cache.expand(n, share_prefix=self.cache.length >= SHARE_PREFIX_MIN_TOKENS)
        self.rows.expand(n)


class EncoderDecoderStepper:
    """Stepper over an encoder-decoder: `encode(...)` once, then `decode(tgt, memory, memory_mask, ...)`.

    `encoder_inputs` are passed to `model.encode` (a tuple of positional args or a mapping of keyword args);
    `memory_mask` (B, S) marks real source positions. The decoder prompt (usually the start token) is what
    `prefill` receives.
    """

    def __init__(
        self,
        model: nn.Module,
        encoder_inputs: Sequence[Any] | Mapping[str, Any],
        memory_mask: Tensor | None = None,
    ) -> None:
        self.model = model
        self.encoder_inputs = encoder_inputs
        self.memory_mask = memory_mask
        self.memory: Tensor | None = None
        self.cache: Any = None
        self.rows = PaddedRows(None)
        self.group = 1  # rows b*group .. b*group+group-1 share one source (after `expand`)

    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        self.group = 1
        if isinstance(self.encoder_inputs, Mapping):
            self.memory = self.model.encode(**self.encoder_inputs)  # (B, S, D)
        else:
            self.memory = self.model.encode(*self.encoder_inputs)
        self.cache = _new_cache(self.model)
        self.rows = PaddedRows(attention_mask)
        logits = self.model.decode(
            input_ids,
            self.memory,
            self.memory_mask,
            attention_mask=self.rows.mask,
            positions=self.rows.prompt_positions(),
            cache=self.cache,
        )
        return logits[:, -1].float()  # (B, V)

    def step(self, tokens: Tensor) -> Tensor:
        mask, positions = self.rows.next_step()
        logits = self.model.decode(
            tokens[:, None],
            self.memory,
            self.memory_mask,
            attention_mask=mask,
            positions=positions,
            cache=self.cache,
        )
        return logits[:, -1].float()

    def reorder(self, index: Tensor) -> None:
        self.rows.reorder(index)
        group = torch.arange(index.shape[0], device=index.device) // self.group
        if (
            self.group > 1
            and index.shape[0] == self.memory.shape[0]
            and torch.equal(index // self.group, group)
        ):
            # Beam search only moves rows within one source's group, whose memory and cross-attention K/V
            # rows are identical copies: skip copying them (B*K x S x D per layer and step).
            cross, self.cache.cross = self.cache.cross, [None] * len(self.cache.cross)
            self.cache.reorder(index)
            self.cache.cross = cross
            return
        self.cache.reorder(index)
        self.memory = self.memory.index_select(0, index)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)
        self.group = 1

    def expand(self, n: int) -> None:
        self.cache.expand(n)
        self.rows.expand(n)
        self.memory = self.memory.repeat_interleave(n, dim=0)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.repeat_interleave(n, dim=0)
        self.group *= n


class StaticStepper:
    """The fixed-shape decode step (`gensys.nn.static_decode`): prefill through `inner` (the module path, with
    its `KVCache`), then every step as one function over preallocated buffers of `prompt + max_new_tokens`
    slots; `compile=True` runs that function compiled by Inductor (compiled once per rows x capacity, so
    capacities are rounded up to a multiple of 64 there). Needs `model.step_spec()` and `decoding(model)`
    around the whole generation (which `generate` enters)."""

    CAPACITY_MULTIPLE = 64

    def __init__(
        self,
        inner: DecoderOnlyStepper | EncoderDecoderStepper,
        max_new_tokens: int,
        compile: bool = False,
    ) -> None:
        self.inner = inner
        self.max_new_tokens = max_new_tokens
        self.compile = compile
        self.decoder: StaticDecoder | None = None
        self.state: StaticState | None = None

    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        logits = self.inner.prefill(input_ids, attention_mask)  # (B, V)
        inner, model = self.inner, self.inner.model
        self.decoder = static_decoder(model, compile=self.compile)
        capacity = input_ids.shape[1] + self.max_new_tokens
        if self.compile:
            capacity = -(-capacity // self.CAPACITY_MULTIPLE) * self.CAPACITY_MULTIPLE
        memory_mask = inner.memory_mask if isinstance(inner, EncoderDecoderStepper) else None
        self.state = self.decoder.load(inner.cache, inner.rows.mask, capacity, memory_mask=memory_mask)
        inner.cache = None  # the state's buffers hold everything now
        return logits

    def step(self, tokens: Tensor) -> Tensor:
        return self.decoder.step(self.state, tokens).float()  # (N, V)

    def reorder(self, index: Tensor) -> None:
        self.state.reorder(index)

    def expand(self, n: int) -> None:
        self.state.expand(n)


def supports_static(model: nn.Module) -> bool:
    """Whether `model` offers the fixed-shape decode step (`step_spec()` returning a spec)."""
    return hasattr(model, "step_spec") and model.step_spec() is not None


def static_decoder(model: nn.Module, compile: bool = False) -> StaticDecoder:
    """`model`'s StaticDecoder, kept on the model between calls while its packed weights are unchanged (so a
    compiled step is compiled once, not per call; it holds no per-call state). Call inside `decoding(model)`.
    """
    spec = model.step_spec() if hasattr(model, "step_spec") else None
    if spec is None:
        raise ValueError(f"{type(model).__name__} has no fixed-shape decode step (step_spec)")
    key = "_gensys_static_decoder_compiled" if compile else "_gensys_static_decoder"
    cached: StaticDecoder | None = model.__dict__.get(key)
    if cached is not None and cached.same_weights(spec):
        return cached
    decoder = StaticDecoder(spec, compile=compile)
    model.__dict__[key] = decoder  # a plain attribute: never a submodule, parameter or state
    return decoder


class RecomputeStepper:
    """Reference stepper without a cache: each step runs `forward(ids (N, T), mask (N, T)) -> (N, T, V)`
    over the whole sequence. Slow; used to prove that cached decoding gives the same tokens."""

    def __init__(self, forward: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.forward = forward
        self.ids: Tensor | None = None
        self.mask: Tensor | None = None

    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        self.ids = input_ids
        ones = torch.ones_like(input_ids, dtype=torch.bool)
        self.mask = ones if attention_mask is None else attention_mask.bool()
        return self.forward(self.ids, self.mask)[:, -1].float()

    def step(self, tokens: Tensor) -> Tensor:
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        return self.forward(self.ids, self.mask)[:, -1].float()

    def reorder(self, index: Tensor) -> None:
        self.ids, self.mask = self.ids.index_select(0, index), self.mask.index_select(0, index)

    def expand(self, n: int) -> None:
        self.ids, self.mask = self.ids.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0)


def make_stepper(
    model: nn.Module,
    encoder_inputs: Sequence[Any] | Mapping[str, Any] | None = None,
    memory_mask: Tensor | None = None,
) -> Stepper:
    """Pick the stepper for `model`: encoder-decoder when it has `encode`/`decode`, else decoder-only."""
    if hasattr(model, "encode") and hasattr(model, "decode"):
        if encoder_inputs is None:
            raise ValueError(
                f"{type(model).__name__} is an encoder-decoder: pass encoder_inputs for encode()"
            )
        return EncoderDecoderStepper(model, encoder_inputs, memory_mask)
    if encoder_inputs is not None:
        raise ValueError(f"{type(model).__name__} is decoder-only; encoder_inputs do not apply")
    return DecoderOnlyStepper(model)


__all__ = [
    "DecoderOnlyStepper",
    "EncoderDecoderStepper",
    "PaddedRows",
    "RecomputeStepper",
    "StaticStepper",
    "Stepper",
    "make_stepper",
    "static_decoder",
    "supports_static",
]
