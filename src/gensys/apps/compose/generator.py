"""The phrase generator: beam search (gensys.generate) over the decoder LM, with an incremental draft cache.

Three pieces are specific to Smart Compose; the search itself is the library's:

- `PrefixConstraint`, a logits processor: while the generated text has not yet covered the request's tail
  (trailing whitespace + half-typed word), only tokens consistent with it are allowed, and their
  log-probabilities are renormalised, so the score is that of the completion given what was typed.
- `SessionState` + `SessionStepper`: the KV cache of a draft is kept between keystrokes. A new request
  compares its prompt tokens with the cached ones, crops the cache at the first difference (an edit before the
  cursor, a changed subject) and runs the model on the new tokens only. Beam search then works on a copy, so
  the draft's cache is never disturbed by the beams.
- `TransformerBackend.propose`: prompt layout, n-best beam search with sentence-punctuation stops, and a
  per-request latency budget checked after every decoding step.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from gensys.apps.compose.data import context_ids
from gensys.data.batching import pad_batch
from gensys.data.tokenizer import Tokenizer
from gensys.generate import GenerationConfig, LogitsProcessor, generate
from gensys.generate.processors import CorpusFusion, CorpusModel
from gensys.generate.stepper import PaddedRows
from gensys.models.decoder_lm import DecoderLM
from gensys.nn.cache import KVCache, stack_left_padded

# A sentence ends at punctuation followed by whitespace: "." alone would stop inside "john.doe" or "3.5".
STOP_STRINGS = [". ", "! ", "? ", "\n"]


@dataclass(frozen=True)
class PromptItem:
    """What a generator needs from a triggered request."""

    subject: str
    previous: str
    prefix: str  # text before the tail; the prompt ends here
    tail: str  # whitespace + partial word the continuation must start with
    draft_id: str | None = None


@dataclass(frozen=True)
class Candidate:
    """A raw continuation (starting with the tail), its confidence in (0, 1] and how generation ended."""

    text: str
    confidence: float  # exp(length-normalised log-prob): the geometric-mean token (or word) probability
    ended: str  # "eos" | "stop" | "length"


# ----------------------------------------------------------------------------------------------------------
# token bytes and the prefix constraint


def _byte_level_alphabet() -> dict[str, int]:
    """Character -> byte of the byte-level BPE alphabet (printable bytes stand for themselves; the others are
    shifted to code points from 256 up, in byte order), so token strings map back to raw bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars: dict[str, int] = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenBytes:
    """The raw bytes of every token, and fast lookups of the tokens consistent with a required byte prefix."""

    def __init__(self, tok: Tokenizer) -> None:
        alphabet = _byte_level_alphabet()
        self.vocab_size = tok.vocab_size
        self.bytes: list[bytes | None] = [None] * self.vocab_size
        for text, tid in tok.hf.get_vocab(with_added_tokens=True).items():
            if tid in tok.special_ids or tid >= self.vocab_size:
                continue
            try:
                self.bytes[tid] = bytes(alphabet[c] for c in text)
            except KeyError:  # not a byte-level token (a foreign tokenizer): never allowed under a constraint
                self.bytes[tid] = None
        self.exact: dict[bytes, list[int]] = {}
        for tid, b in enumerate(self.bytes):
            if b:
                self.exact.setdefault(b, []).append(tid)
        order = sorted((b, tid) for tid, b in enumerate(self.bytes) if b)
        self.sorted_bytes = [b for b, _ in order]
        self.sorted_ids = [tid for _, tid in order]
        self.max_len = max((len(b) for b in self.sorted_bytes), default=1)
        self._allowed: OrderedDict[bytes, Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def decode(self, ids: list[int]) -> bytes:
        return b"".join(self.bytes[t] or b"" for t in ids)

    def allowed(self, need: bytes) -> Tensor:
        """Ids (LongTensor) of tokens t with `need.startswith(t)` or `t.startswith(need)` (cached)."""
        with self._lock:
            hit = self._allowed.get(need)
            if hit is not None:
                self._allowed.move_to_end(need)
                return hit
        ids: list[int] = []
        for k in range(1, len(need)):  # tokens that are a proper prefix of what is still needed
            ids.extend(self.exact.get(need[:k], ()))
        lo = bisect.bisect_left(self.sorted_bytes, need)
        hi = bisect.bisect_right(self.sorted_bytes, need + b"\xff" * self.max_len)
        ids.extend(self.sorted_ids[lo:hi])  # tokens that start with all of it
        out = torch.tensor(sorted(set(ids)), dtype=torch.long)
        with self._lock:
            self._allowed[need] = out
            if len(self._allowed) > 4096:
                self._allowed.popitem(last=False)
        return out


class PrefixConstraint(LogitsProcessor):
    """Only continuations whose bytes start with each prompt's `tail` (see the module docstring).

    Rows are prompt-major (`rows_per_prompt` beams per prompt); `prompt_length` is the padded prompt length:
    `input_ids[:, prompt_length:]` are the generated tokens. Works on log-probs (beam search) or logits.
    """

    def __init__(
        self, token_bytes: TokenBytes, tails: list[str], rows_per_prompt: int, prompt_length: int
    ) -> None:
        self.tb = token_bytes
        self.tails = [t.encode("utf-8") for t in tails]
        self.rows_per_prompt = rows_per_prompt
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        out: Tensor | None = None
        generated = input_ids[:, self.prompt_length :].tolist()
        for row, toks in enumerate(generated):
            need = self.tails[row // self.rows_per_prompt]
            if not need:
                continue
            got = self.tb.decode(toks)
            if len(got) >= len(need) or not need.startswith(got):
                continue  # the tail is covered (or the row went its own way: nothing left to enforce)
            allowed = self.tb.allowed(need[len(got) :])
            if out is None:
                out = scores.clone()
            row_scores = torch.full_like(scores[row], float("-inf"))
            if allowed.numel():
                sel = scores[row, allowed]
                row_scores[allowed] = sel - torch.logsumexp(sel, dim=0)  # renormalised over allowed tokens
            out[row] = row_scores
        return scores if out is None else out


# ----------------------------------------------------------------------------------------------------------
# incremental draft cache


@dataclass
class SessionState:
    """One draft's prompt tokens, their KV cache and the logits after the last one."""

    ids: list[int] = field(default_factory=list)
    cache: KVCache | None = None
    logits: Tensor | None = None  # (1, V)
    computed_tokens: int = 0  # tokens run through the model so far (for tests and benchmarks)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _reset_if_stale(model: DecoderLM, state: SessionState) -> None:
    if state.cache is None or state.cache.length != len(state.ids):  # never trust a cache written elsewhere
        state.cache, state.ids, state.logits = model.new_cache(), [], None


def _kept_tokens(state: SessionState, ids: list[int]) -> int | None:
    """How many cached tokens of `state` stay valid for prompt `ids` (None: nothing to run at all)."""
    lcp = _common_prefix(state.ids, ids)
    if lcp == len(ids) == len(state.ids) and state.logits is not None:
        return None
    return min(lcp, len(ids) - 1)  # at least the last token runs: its logits are the output


@torch.inference_mode()
def sync_session(model: DecoderLM, state: SessionState, ids: list[int]) -> Tensor:
    """Bring `state` to prompt `ids` running only the tokens after the first difference; logits (1, V).

    An edit before the cursor (or a changed subject) crops the cache at the first differing token; typing
    at the end only appends. At least the last token is recomputed when nothing changed but its logits are
    missing.
    """
    if not ids:
        raise ValueError("empty prompt")
    _reset_if_stale(model, state)
    keep = _kept_tokens(state, ids)
    if keep is None:
        return state.logits  # type: ignore[return-value]
    state.cache.crop(keep)  # type: ignore[union-attr]
    new = torch.tensor([ids[keep:]], dtype=torch.long)  # (1, T_new)
    h = model.hidden(new, cache=state.cache)  # (1, T_new, D); positions continue from `keep`
    state.logits = model.lm_head(h[:, -1]).float()  # (1, V)
    state.ids = list(ids)
    state.computed_tokens += len(ids) - keep
    return state.logits


@torch.inference_mode()
def sync_sessions(model: DecoderLM, states: list[SessionState], prompts: list[list[int]]) -> Tensor:
    """`sync_session` for several drafts at once; logits (B, V), one row per state.

    Drafts that already have a cache run their new tokens as one batch: their caches are stacked
    (left-padded), the new tokens left-padded after them, each row at its own positions; the new keys and
    values are then appended to each draft's own cache. A draft without a cache runs alone (its whole
    prompt is one full-length forward anyway).
    """
    keeps: list[int | None] = []
    for st, ids in zip(states, prompts):
        if not ids:
            raise ValueError("empty prompt")
        _reset_if_stale(model, st)
        keeps.append(_kept_tokens(st, ids))
    together = [b for b, k in enumerate(keeps) if k]  # k > 0: a cache to continue from
    if len(together) > 1:
        for b in together:
            states[b].cache.crop(keeps[b])  # type: ignore[union-attr, arg-type]
        news = [prompts[b][keeps[b] :] for b in together]  # type: ignore[misc]
        t_new = max(len(x) for x in news)
        stacked, past = stack_left_padded([states[b].cache for b in together])  # type: ignore[misc]
        ids = torch.full((len(together), t_new), 0, dtype=torch.long)  # (B', T_new), left-padded
        new_mask = torch.zeros(len(together), t_new, dtype=torch.bool)
        positions = torch.zeros(len(together), t_new, dtype=torch.long)
        for row, (b, x) in enumerate(zip(together, news)):
            ids[row, t_new - len(x) :] = torch.tensor(x)
            new_mask[row, t_new - len(x) :] = True
            positions[row, t_new - len(x) :] = torch.arange(keeps[b], keeps[b] + len(x))  # type: ignore[arg-type]
        mask = torch.cat([past, new_mask], dim=1)  # (B', L + T_new): pads of the cache, then of the new part
        h = model.hidden(ids, attention_mask=mask, positions=positions, cache=stacked)  # (B', T_new, D)
        logits = model.lm_head(h[:, -1]).float()  # (B', V): every row's last real token is the last column
        for row, (b, x) in enumerate(zip(together, news)):
            st = states[b]
            for layer in range(stacked.n_layers):
                k, v = stacked.keys_values(layer)
                st.cache.update(layer, k[row : row + 1, :, -len(x) :], v[row : row + 1, :, -len(x) :])  # type: ignore[union-attr]
            st.logits = logits[row : row + 1]
            st.ids = list(prompts[b])
            st.computed_tokens += len(x)
    out = []
    for b, (st, ids) in enumerate(zip(states, prompts)):
        out.append(st.logits if b in together and len(together) > 1 else sync_session(model, st, ids))
    return torch.cat(out, dim=0)  # type: ignore[arg-type]


class SessionStepper:
    """A `gensys.generate` stepper over drafts' session states, one prompt row per state.

    Its prefill is `sync_sessions` (only each draft's new tokens run, in one batch). The beams then decode on
    one batch cache stacked from the drafts' caches, left-padded to the longest (`stack_left_padded`), so
    drafts of concurrent users share every decoding step and the drafts' own caches are never written by a
    beam.
    """

    def __init__(self, model: DecoderLM, states: SessionState | list[SessionState]) -> None:
        self.model = model
        self.states = [states] if isinstance(states, SessionState) else list(states)
        self.work: KVCache | None = None
        self.rows = PaddedRows(None)

    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if input_ids.shape[0] != len(self.states):
            raise ValueError(f"{input_ids.shape[0]} prompt rows for {len(self.states)} session states")
        rows = input_ids.tolist()
        if attention_mask is not None:
            rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, attention_mask.tolist())]
        self.work = None
        return sync_sessions(self.model, self.states, rows)  # (B, V); a copy: cat of the states' logits

    def expand(self, n: int) -> None:
        work, mask = stack_left_padded([st.cache for st in self.states])  # type: ignore[misc]
        # With several drafts each prompt is read once per step, not once per beam (measured: a call with 8
        # drafts 150 -> 104 ms CPU); one draft alone is ~10% faster with its prompt copied to the beams.
        work.expand(n, share_prefix=len(self.states) > 1)
        self.work = work
        self.rows = PaddedRows(mask)
        self.rows.expand(n)

    def step(self, tokens: Tensor) -> Tensor:
        if self.work is None:
            self.expand(1)
        mask, positions = self.rows.next_step()
        logits = self.model(
            tokens[:, None], attention_mask=mask, positions=positions, cache=self.work, last_only=True
        )  # (N, 1, V)
        return logits[:, -1].float()

    def reorder(self, index: Tensor) -> None:
        assert self.work is not None
        self.work.reorder(index)
        self.rows.reorder(index)


class SessionCache:
    """Least-recently-used map draft_id -> SessionState, safe to share between server threads."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._states: OrderedDict[str, SessionState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, draft_id: str) -> SessionState:
        with self._lock:
            state = self._states.get(draft_id)
            if state is None:
                state = self._states[draft_id] = SessionState()
            self._states.move_to_end(draft_id)
            while len(self._states) > self.capacity:
                self._states.popitem(last=False)
            return state

    def drop(self, draft_id: str) -> None:
        with self._lock:
            self._states.pop(draft_id, None)

    def __len__(self) -> int:
        return len(self._states)


# ----------------------------------------------------------------------------------------------------------
# the backend


class BudgetExceeded(Exception):
    """Decoding ran past the request's latency budget."""


class Deadline(LogitsProcessor):
    """Raises BudgetExceeded at the first decoding step that starts after `deadline` (a perf_counter)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if time.perf_counter() > self.deadline:
            raise BudgetExceeded
        return scores


class TransformerBackend:
    """Proposes n-best continuations for triggered requests with the decoder LM."""

    name = "transformer"

    def __init__(
        self,
        model: DecoderLM,
        tok: Tokenizer,
        *,
        num_beams: int,
        max_new_tokens: int,
        max_context_tokens: int,
        subject_max_tokens: int,
        previous_max_tokens: int,
        session_cache_size: int = 256,
        max_beam_rows: int = 0,
        stop_after_words: int = 0,
        min_beams: int = 1,
        memory: tuple[CorpusModel, list[float]] | None = None,
    ) -> None:
        self.model = model.eval()
        # (index, weights): mixed into the LM at every step (apps/compose/memory.py); None = the LM alone.
        self.memory = memory
        self.tok = tok
        self.token_bytes = TokenBytes(tok)
        self.num_beams = num_beams
        # A call decoding many drafts at once gives each fewer beams (never below `min_beams`), so that its
        # rows stay within this budget (0 = no budget): under load, latency matters more than extra beams.
        self.max_beam_rows = max_beam_rows
        self.min_beams = max(1, min_beams)
        # A hypothesis whose text has begun word `stop_after_words` + 1 is finished (0 = off): post-processing
        # keeps at most max_words words, so decoding further only costs time. It ends as "length" (the last,
        # begun word is dropped).
        self.stop_after_words = stop_after_words
        self.max_new_tokens = max_new_tokens
        if model.cfg.pos == "learned":  # a learned table has no rows beyond max_seq_len
            max_context_tokens = min(max_context_tokens, model.cfg.max_seq_len)
        self.max_context_tokens = max_context_tokens
        self.subject_max_tokens = subject_max_tokens
        self.previous_max_tokens = previous_max_tokens
        self.sessions = SessionCache(session_cache_size)
        self.gen_cfg = GenerationConfig(
            strategy="beam",
            num_beams=num_beams,
            num_return_sequences=num_beams,
            max_new_tokens=max_new_tokens,
            length_penalty=1.0,
            early_stopping=True,
            eos_token_id=tok.eos_id,
            pad_token_id=tok.pad_id,
            stop_strings=STOP_STRINGS,
        )

    def prompt_ids(self, item: PromptItem) -> list[int]:
        """`<bos> subject <sep> previous <sep> body-so-far`, the body windowed to fit the context.

        A long draft keeps its last tokens; the window start moves in steps of half the budget so that the
        cached prefix stays valid between those steps (a window moving every token would recompute it all).
        """
        ctx = context_ids(
            self.tok, item.subject, item.previous, self.subject_max_tokens, self.previous_max_tokens
        )
        body = self.tok.encode(item.prefix)
        budget = max(8, self.max_context_tokens - self.max_new_tokens - len(ctx))
        if len(body) > budget:
            stride = max(1, budget // 2)
            start = ((len(body) - budget) // stride + 1) * stride
            body = body[start:]
        return ctx + body

    def _candidates(self, tokens: list[int], score: float) -> Candidate:
        eos = self.tok.eos_id
        text = self.tok.decode([t for t in tokens if t != eos])
        if tokens and tokens[-1] == eos:
            ended = "eos"
        elif any(s in text for s in STOP_STRINGS):
            ended = "stop"
        else:
            ended = "length"
        return Candidate(text, math.exp(score), ended)

    def propose(self, items: list[PromptItem], deadline: float | None = None) -> list[list[Candidate] | None]:
        """n-best candidates per item (best first), or None for an item whose budget ran out."""
        prompts = [self.prompt_ids(it) for it in items]
        out: list[list[Candidate] | None] = [None] * len(items)
        # Drafts decode together, one row each, on their stacked caches; a draft that appears twice in one
        # call (two keystrokes of one user) waits for the next round, as its cache can hold one prompt.
        waiting = [i for i, it in enumerate(items) if it.draft_id is not None]
        while waiting:
            seen: set[str] = set()
            rnd: list[int] = []
            for i in waiting:
                if items[i].draft_id not in seen:
                    seen.add(items[i].draft_id)  # type: ignore[arg-type]
                    rnd.append(i)
            waiting = [i for i in waiting if i not in rnd]
            states = [self.sessions.get(items[i].draft_id) for i in rnd]  # type: ignore[arg-type]
            with ExitStack() as held:
                for k in sorted(range(len(rnd)), key=lambda k: items[rnd[k]].draft_id or ""):
                    held.enter_context(states[k].lock)  # one global order: concurrent calls cannot deadlock
                ids, mask = pad_batch([prompts[i] for i in rnd], self.tok.pad_id, side="left")  # (B, T)
                stepper = SessionStepper(self.model, states)
                results = self._decode(ids, mask, [items[i].tail for i in rnd], stepper, deadline)
            for i, r in zip(rnd, results):
                out[i] = r
        batch = [i for i, it in enumerate(items) if it.draft_id is None]
        if batch:
            ids, mask = pad_batch([prompts[i] for i in batch], self.tok.pad_id, side="left")  # (B, T)
            results = self._decode(ids, mask, [items[i].tail for i in batch], None, deadline)
            for i, r in zip(batch, results):
                out[i] = r
        return out

    def beams_for(self, rows: int) -> int:
        """Beams per draft for a call decoding `rows` drafts (see `max_beam_rows`)."""
        if self.max_beam_rows <= 0 or rows * self.num_beams <= self.max_beam_rows:
            return self.num_beams
        return max(min(self.min_beams, self.num_beams), self.max_beam_rows // rows)

    def _decode(
        self, ids: Tensor, mask: Tensor | None, tails: list[str], stepper, deadline: float | None
    ) -> list[list[Candidate] | None]:
        beams = self.beams_for(ids.shape[0])
        gen_cfg = self.gen_cfg
        if beams != self.num_beams:
            gen_cfg = replace(gen_cfg, num_beams=beams, num_return_sequences=beams)
        procs: list[LogitsProcessor] = []
        if self.memory is not None:  # before the prefix constraint, which renormalises what it allows
            procs.append(CorpusFusion(*self.memory))
        procs.append(PrefixConstraint(self.token_bytes, tails, beams, ids.shape[1]))
        if deadline is not None:
            procs.append(Deadline(deadline))
        stopping = []
        if self.stop_after_words > 0:
            t0, limit, decode = ids.shape[1], self.stop_after_words, self.tok.decode

            def enough_words(seqs: Tensor) -> Tensor:  # (N, T) -> (N,)
                rows = seqs[:, t0:].tolist()
                return torch.tensor([len(decode(r).split()) > limit for r in rows], dtype=torch.bool)

            stopping.append(enough_words)
        try:
            res = generate(
                self.model, ids, mask, gen_cfg, processors=procs, tokenizer=self.tok, stepper=stepper,
                stopping=stopping,
            )  # fmt: skip
        except BudgetExceeded:
            return [None] * ids.shape[0]
        return [[self._candidates(h.tokens, h.score) for h in hyps] for hyps in res.nbest]


__all__ = [
    "BudgetExceeded",
    "Candidate",
    "PrefixConstraint",
    "PromptItem",
    "SessionCache",
    "SessionState",
    "SessionStepper",
    "TokenBytes",
    "TransformerBackend",
    "sync_session",
    "sync_sessions",
]
