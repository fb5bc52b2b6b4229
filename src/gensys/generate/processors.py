"""Logits processors: small callables `(input_ids (N, T), scores (N, V)) -> scores (N, V)`.

Each processor declares the strategies it applies to (`applies_to`). Penalties and constraints (repetition
penalty, no-repeat-n-gram, bad words, min new tokens) shape every strategy; the filters that only make sense
when drawing a random token (temperature, top-k, top-p, min-p) apply to sampling only. `check_applicable`
turns a mismatch into an error instead of silently dropping a knob.

`input_ids` is the whole row so far, prompt included. Rows of a left-padded batch say where their real tokens
start through `start` (N,) (number of leading pad positions), so a row's result never depends on its
neighbours' padding.

Processors return new tensors (never edit `scores` in place) so a caller may keep the unprocessed scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor

from gensys.errors import GensysError

GREEDY, SAMPLE, BEAM = "greedy", "sample", "beam"
STRATEGIES = (GREEDY, SAMPLE, BEAM)
_ALL = frozenset(STRATEGIES)
_SAMPLING_ONLY = frozenset({SAMPLE})


class GenerationConfigError(GensysError, ValueError):
    """A decoding setting is invalid or does not apply to the chosen strategy."""


def _eos_tensor(eos_token_id: int | Sequence[int] | Tensor) -> Tensor:
    if isinstance(eos_token_id, Tensor):
        return eos_token_id.reshape(-1).long()
    if isinstance(eos_token_id, int):
        return torch.tensor([eos_token_id])
    return torch.tensor(list(eos_token_id), dtype=torch.long)


def _position_ok(start: Tensor | int | None, n: int, t: int, device: torch.device) -> Tensor | None:
    """Bool (n, t): position j of row i holds a real (not left-pad, not excluded) token; None = all do."""
    if start is None:
        return None
    pos = torch.arange(t, device=device)
    if isinstance(start, int):
        return (pos >= start).expand(n, t)
    return pos[None, :] >= start.to(device)[:, None]


class LogitsProcessor:
    """Base class: subclasses set `applies_to` and implement `__call__`."""

    applies_to: ClassVar[frozenset[str]] = _ALL

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        raise NotImplementedError


class ProcessorList(list):
    """Apply processors in order (the order matters: penalties before filters, as in HF)."""

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        for p in self:
            scores = p(input_ids, scores)
        return scores


def check_applicable(processors: Sequence[LogitsProcessor], strategy: str) -> None:
    """Raise if a processor does not apply to `strategy` (e.g. top-k with greedy search)."""
    if strategy not in STRATEGIES:
        raise GenerationConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    for p in processors:
        allowed = getattr(p, "applies_to", _ALL)
        if strategy not in allowed:
            raise GenerationConfigError(
                f"{type(p).__name__} applies only to {'/'.join(sorted(allowed))}, not to {strategy!r}"
            )


# ------------------------------------------------------------------------------------ sampling filters


class Temperature(LogitsProcessor):
    """Divide logits by `temperature` (>0): below 1 sharpens, above 1 flattens the distribution."""

    applies_to = _SAMPLING_ONLY

    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise GenerationConfigError(f"temperature must be > 0 (greedy is the argmax), got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return scores / self.temperature


class TopK(LogitsProcessor):
    """Keep the k highest scores (ties with the k-th are kept), set the rest to -inf."""

    applies_to = _SAMPLING_ONLY

    def __init__(self, k: int, min_tokens_to_keep: int = 1) -> None:
        if k < 1:
            raise GenerationConfigError(f"top_k must be >= 1, got {k}")
        self.k = max(int(k), min_tokens_to_keep)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        k = min(self.k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[:, -1:]  # (N, 1)
        return scores.masked_fill(scores < kth, float("-inf"))


class TopP(LogitsProcessor):
    """Nucleus filter: keep the smallest set of most probable tokens whose probability sums to at least p."""

    applies_to = _SAMPLING_ONLY

    def __init__(self, p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 <= p <= 1.0:
            raise GenerationConfigError(f"top_p must be in [0, 1], got {p}")
        self.p = float(p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        # Ascending sort: a token is dropped when the mass of everything at or below it is <= 1 - p, i.e. the
        # tokens above it already reach p. Summing the small tail (rather than the large head) keeps the
        # boundary decision in the same floating-point order as HF.
        sorted_scores, order = torch.sort(scores, dim=-1)  # (N, V) ascending
        tail_mass = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = tail_mass <= 1.0 - self.p
        drop_sorted[:, -self.min_tokens_to_keep :] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, float("-inf"))


class MinP(LogitsProcessor):
    """Keep tokens whose probability is at least `p` times the top token's probability."""

    applies_to = _SAMPLING_ONLY

    def __init__(self, p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 <= p <= 1.0:
            raise GenerationConfigError(f"min_p must be in [0, 1], got {p}")
        self.p = float(p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        probs = scores.softmax(dim=-1)  # (N, V)
        drop = probs < self.p * probs.amax(dim=-1, keepdim=True)
        keep = torch.topk(probs, min(self.min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
        drop = drop.scatter(1, keep, False)
        return scores.masked_fill(drop, float("-inf"))


# ---------------------------------------------------------------------- penalties and constraints (all)


class RepetitionPenalty(LogitsProcessor):
    """CTRL-style penalty on tokens already present: positive scores / penalty, negative scores * penalty.

    `start` (int or (N,)) is the first position that counts: the number of left-pad positions to count the
    prompt, or the padded prompt length to count only generated tokens (`penalize_prompt=False`).
    """

    def __init__(self, penalty: float, start: Tensor | int | None = None) -> None:
        if not penalty > 0:
            raise GenerationConfigError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)
        self.start = start

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        n, t = input_ids.shape
        vocab = scores.shape[-1]
        ok = _position_ok(self.start, n, t, input_ids.device)
        # Excluded positions (and ids beyond the head's vocab) scatter into a spare column that is dropped.
        ids = input_ids.clamp(max=vocab) if ok is None else input_ids.masked_fill(~ok, vocab).clamp(max=vocab)
        seen = torch.zeros(n, vocab + 1, dtype=torch.bool, device=scores.device)
        seen.scatter_(1, ids, True)
        seen = seen[:, :vocab]
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)


class NoRepeatNGram(LogitsProcessor):
    """Ban any token that would complete an n-gram already present in the row (prompt included)."""

    def __init__(self, n: int, start: Tensor | int | None = None) -> None:
        if n < 1:
            raise GenerationConfigError(f"no_repeat_ngram_size must be >= 1, got {n}")
        self.n = int(n)
        self.start = start

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        rows, t = input_ids.shape
        n, vocab = self.n, scores.shape[-1]
        if t < n:
            return scores
        # The next token completes the n-gram (last n-1 tokens, next); any earlier window whose first n-1
        # tokens equal that suffix bans its own last token. One vectorised comparison over all windows.
        windows = input_ids.unfold(1, n, 1)  # (N, W, n), W = t - n + 1
        suffix = input_ids[:, t - n + 1 :]  # (N, n-1)
        match = (windows[:, :, : n - 1] == suffix[:, None, :]).all(dim=-1)  # (N, W)
        ok = _position_ok(self.start, rows, windows.shape[1], input_ids.device)
        if ok is not None:  # a window must start at a real token
            match = match & ok
        target = torch.where(match, windows[:, :, -1].clamp(max=vocab), vocab)
        banned = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, target, True)
        return scores.masked_fill(banned[:, :vocab], float("-inf"))


class BadWords(LogitsProcessor):
    """Forbid token sequences: a single token is always banned; a longer one has its last token banned
    whenever the row ends with the rest of it. Single-token EOS entries are ignored (as in HF), so banning
    words can never make a sequence unable to end."""

    def __init__(
        self, bad_words_ids: Sequence[Sequence[int]], eos_token_id: int | Sequence[int] | None = None
    ) -> None:
        if not bad_words_ids or any(len(w) == 0 for w in bad_words_ids):
            raise GenerationConfigError("bad_words_ids must be a non-empty list of non-empty token lists")
        eos = set() if eos_token_id is None else set(_eos_tensor(eos_token_id).tolist())
        words = [list(map(int, w)) for w in bad_words_ids if not (len(w) == 1 and int(w[0]) in eos)]
        self.single = torch.tensor(sorted({w[0] for w in words if len(w) == 1}), dtype=torch.long)
        # Group multi-token words by prefix length so each group is one comparison.
        by_len: dict[int, list[list[int]]] = {}
        for w in words:
            if len(w) > 1:
                by_len.setdefault(len(w) - 1, []).append(w)
        self.multi = [
            (torch.tensor([w[:-1] for w in ws]), torch.tensor([w[-1] for w in ws])) for ws in by_len.values()
        ]
        self.max_id = max(max(w) for w in words) if words else -1

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        vocab = scores.shape[-1]
        if self.max_id >= vocab:
            raise GenerationConfigError(f"bad_words_ids holds a token id >= the model's vocabulary ({vocab})")
        banned = torch.zeros(input_ids.shape[0], vocab, dtype=torch.bool, device=scores.device)
        if self.single.numel():
            banned[:, self.single.to(scores.device)] = True
        t = input_ids.shape[1]
        for prefixes, last in self.multi:  # prefixes (W, k), last (W,)
            k = prefixes.shape[1]
            if k > t:
                continue
            hit = (input_ids[:, None, t - k :] == prefixes.to(input_ids.device)[None]).all(dim=-1)  # (N, W)
            rows, which = hit.nonzero(as_tuple=True)
            banned[rows, last.to(scores.device)[which]] = True
        return scores.masked_fill(banned, float("-inf"))


class MinNewTokens(LogitsProcessor):
    """Forbid EOS until `min_new_tokens` tokens have been generated after the (padded) prompt."""

    def __init__(
        self, min_new_tokens: int, eos_token_id: int | Sequence[int] | Tensor, prompt_length: int
    ) -> None:
        if min_new_tokens < 0:
            raise GenerationConfigError(f"min_new_tokens must be >= 0, got {min_new_tokens}")
        self.min_new_tokens = int(min_new_tokens)
        self.eos = _eos_tensor(eos_token_id)
        self.prompt_length = int(prompt_length)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.shape[1] - self.prompt_length >= self.min_new_tokens:
            return scores
        out = scores.clone()
        out[:, self.eos.to(scores.device)] = float("-inf")
        return out


class CorpusModel(Protocol):
    """What `CorpusFusion` asks of a corpus index (e.g. `gensys.models.infinigram.InfiniGram`)."""

    max_match: int  # longest suffix of a row it looks at

    def next_distribution(self, context: Sequence[int]) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, ids, log-probabilities): the next-token distribution after the longest suffix of `context`
        the corpus holds (n tokens; n = 0 and empty arrays when none)."""
        ...


class CorpusFusion(LogitsProcessor):
    """Interpolate the model with corpus counts: p = (1 - w[n]) p_model + w[n] c(ctx, t) / c(ctx).

    c counts the tokens that followed the longest suffix of the row (n tokens) found in the corpus, and the
    weight w[n] grows with n: a long exact match says the text is one the corpus holds, where its counts
    predict the next token far better than a small model (`fit_match_weights` fits w on held-out text).
    Scores come back as log-probabilities (logits are normalised first). A token an earlier processor set
    to -inf (a ban, a repeated n-gram) stays -inf; the corpus mass it would have taken is renormalised over
    the row, so the order among processors does not matter for masks.
    """

    def __init__(
        self, index: CorpusModel, weights: Sequence[float], start: Tensor | int | None = None
    ) -> None:
        if any(not 0.0 <= w < 1.0 for w in weights):
            raise GenerationConfigError("corpus fusion weights must be in [0, 1)")
        self.index = index
        self.weights = [float(w) for w in weights]
        self.start = start

    def weight(self, n: int) -> float:
        """w[n]; lengths past the end of the table take its last entry."""
        if n <= 0 or not self.weights:
            return 0.0
        return self.weights[min(n, len(self.weights) - 1)]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        logp = scores.float().log_softmax(dim=-1)  # (N, V); a no-op on log-probs
        width = self.index.max_match
        rows = input_ids[:, -width:].tolist()
        t = input_ids.shape[1]
        model_share = [0.0] * len(rows)  # log(1 - w) per row
        # Per-row work on a few small arrays is numpy's strength (~1 µs an op, vs ~5 µs for torch).
        hit_rows: list[np.ndarray] = []
        hit_ids: list[np.ndarray] = []
        hit_logp: list[np.ndarray] = []  # log(w * c(ctx, t) / c(ctx)) of the tokens seen after the match
        for r, ctx in enumerate(rows):
            if self.start is not None:
                s = self.start if isinstance(self.start, int) else int(self.start[r])
                ctx = ctx[max(0, s - (t - len(ctx))) :]  # drop left padding
            n, ids, logq = self.index.next_distribution(ctx)
            w = self.weight(n)
            if w <= 0.0:
                continue
            model_share[r] = math.log1p(-w)
            hit_rows.append(np.full(len(ids), r, dtype=np.int64))
            hit_ids.append(ids)
            hit_logp.append(logq + math.log(w))
        if not hit_rows:
            return logp
        # numpy on the host: a handful of ops on small arrays, each ~5x cheaper than torch's dispatch (on a
        # GPU this costs one (N, V) copy each way, which this CPU-serving mixer accepts).
        out = logp.detach().cpu().numpy() + np.asarray(model_share, dtype=np.float32)[:, None]  # (N, V)
        rr, ii = np.concatenate(hit_rows), np.concatenate(hit_ids)
        base = out[rr, ii]
        alive = base != -np.inf  # a token an earlier processor masked stays masked: no corpus mass revives it
        out[rr, ii] = np.where(alive, np.logaddexp(base, np.concatenate(hit_logp)), -np.inf)
        if not alive.all():  # the corpus mass that fell on masked tokens is spread over the rest of the row
            rows = np.unique(rr[~alive])
            sub = out[rows]
            top = sub.max(axis=1, keepdims=True)
            ok = np.isfinite(top[:, 0])
            sub[ok] -= top[ok] + np.log(np.exp(sub[ok] - top[ok]).sum(axis=1, keepdims=True))
            out[rows] = sub
        return torch.from_numpy(out).to(logp.device)


__all__ = [
    "BEAM",
    "GREEDY",
    "SAMPLE",
    "STRATEGIES",
    "BadWords",
    "CorpusModel",
    "CorpusFusion",
    "GenerationConfigError",
    "LogitsProcessor",
    "MinNewTokens",
    "MinP",
    "NoRepeatNGram",
    "ProcessorList",
    "RepetitionPenalty",
    "Temperature",
    "TopK",
    "TopP",
    "check_applicable",
]
