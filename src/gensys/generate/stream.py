"""Streaming: an iterator of per-step events with token ids and text deltas, for every strategy.

    for ev in stream(model, ids, config=cfg, tokenizer=tok):
        print(ev.text_deltas[0], end="", flush=True)   # greedy / sample
        # beam: ev.texts[0] is the best hypothesis so far (it may change completely from one step to the next)
    out = ev.output                                      # the last event carries the GenerationOutput

Text deltas come from an incremental detokeniser: byte-level BPE may split one UTF-8 character across several
tokens, so text is only released once it decodes cleanly; decoding a short window of preceding tokens keeps
tokenizers that drop a leading space at the start of `decode` (SentencePiece style) correct. Text that could
be the beginning of a stop string is held back until it is known not to be one, so a stop string never leaks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gensys.generate.core import Detokenizer, GenerationConfig, GenerationOutput, generate_steps
from gensys.generate.processors import LogitsProcessor
from gensys.generate.search import BeamStep, TokenStep
from gensys.generate.stepper import Stepper

_REPLACEMENT = "\ufffd"  # what a decoder prints for an incomplete UTF-8 sequence


class IncrementalDetokenizer:
    """Turn a stream of token ids into text deltas whose concatenation is the decoded text."""

    def __init__(self, tokenizer: Detokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the context window decoded with each new token
        self.read_offset = 0  # tokens before this have been turned into text

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a multi-byte character is still partial)."""
        self.ids.append(int(token_id))
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith(_REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Text still held back (e.g. a truncated character at the very end), as the decoder renders it."""
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.tokenizer.decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]


class _RowText:
    """One row's text so far, releasing only what cannot be (the start of) a stop string."""

    def __init__(self, tokenizer: Detokenizer, stops: Sequence[str]) -> None:
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0
        self.stopped = False

    def _release(self, final: bool) -> str:
        end = len(self.text)
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            end, self.stopped = min(hits), True
        elif not final:
            # Hold back the longest tail that is a proper prefix of some stop string.
            for s in self.stops:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        delta = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.text += self.detok.push(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        if self.stopped:
            return ""
        self.text += self.detok.flush()
        return self._release(final=True)


@dataclass
class StreamEvent:
    """One decoding step. Greedy / sample fill `token_ids` and `text_deltas` (per row); beam search fills
    `hypotheses`, `texts` and `scores` (per prompt, the best hypothesis so far). The last event has
    `done=True` and the full `output`."""

    step: int
    finished: list[bool]
    token_ids: list[int | None] | None = None  # None for a row that had already finished
    text_deltas: list[str] | None = None
    hypotheses: list[list[int]] | None = None
    texts: list[str] | None = None
    scores: list[float] | None = None
    done: bool = False
    output: GenerationOutput | None = None


def stream(
    model: nn.Module | None,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    config: GenerationConfig | None = None,
    *,
    tokenizer: Detokenizer | None = None,
    encoder_inputs: Sequence[Any] | Mapping[str, Any] | None = None,
    memory_mask: Tensor | None = None,
    processors: Sequence[LogitsProcessor] = (),
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    stepper: Stepper | None = None,
) -> Iterator[StreamEvent]:
    """Like `generate`, but yields a `StreamEvent` after every step (text only when `tokenizer` is given)."""
    cfg = config or GenerationConfig()
    eos = set(cfg.eos_ids())
    stops = cfg.stop_strings or ()
    steps = generate_steps(
        model, input_ids, attention_mask, cfg,
        encoder_inputs=encoder_inputs, memory_mask=memory_mask, processors=processors, tokenizer=tokenizer,
        generator=generator, stepper=stepper, emit=True,
    )  # fmt: skip
    rows: list[_RowText] | None = None
    last: StreamEvent | None = None
    while True:
        try:
            ev = next(steps)
        except StopIteration as stop:
            output: GenerationOutput = stop.value
            break
        if isinstance(ev, BeamStep):
            texts = (
                None if tokenizer is None else [_beam_text(tokenizer, t, eos, stops) for t in ev.best_tokens]
            )
            last = StreamEvent(
                ev.step, ev.best_finished, hypotheses=ev.best_tokens, texts=texts, scores=ev.best_scores
            )
            yield last
            continue
        assert isinstance(ev, TokenStep)
        tokens = ev.tokens.tolist()
        was = ev.was_finished.tolist()
        now = ev.finished.tolist()
        if tokenizer is not None and rows is None:
            rows = [_RowText(tokenizer, stops) for _ in tokens]
        deltas = None
        if rows is not None:
            deltas = []
            for i, tok in enumerate(tokens):
                d = "" if was[i] or tok in eos else rows[i].push(tok)
                if now[i] and not was[i]:
                    d += rows[i].finish()
                deltas.append(d)
        ids = [None if w else t for t, w in zip(tokens, was)]
        last = StreamEvent(ev.step, now, token_ids=ids, text_deltas=deltas)
        yield last
    # Rows cut by max_new_tokens release their held-back text in a final event.
    tail = None
    if rows is not None:
        tail = [r.finish() for r in rows]
    finished = [True] * (len(last.finished) if last is not None else 0)
    yield StreamEvent(-1 if last is None else last.step, finished, text_deltas=tail, done=True, output=output)


def _beam_text(tokenizer: Detokenizer, tokens: list[int], eos: set[int], stops: Sequence[str]) -> str:
    text = tokenizer.decode([t for t in tokens if t not in eos])
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


__all__ = ["IncrementalDetokenizer", "StreamEvent", "stream"]
