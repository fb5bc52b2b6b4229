"""Search strategies over a `Stepper`: greedy / multinomial sampling, and beam search.

Each strategy is a generator: it yields one event per decoding step when `emit=True` (streaming) and returns
its result through `StopIteration.value` (use `run_to_end`). Per-step work is vectorised across rows
(batch x beams); the only Python loop is over steps.

Beam search follows Hugging Face's semantics (transformers 5.x) so that its outputs can be checked against HF
`generate`: processors act on log-softmax scores; each step keeps the best `2 * num_beams` candidates (more
with several EOS ids) so that enough unfinished beams remain; a finished hypothesis scores
`sum(logprobs) / generated_len ** length_penalty` with `generated_len` counting the new tokens including EOS;
`early_stopping` is True (stop once `num_beams` hypotheses are finished), False (stop when the best running
beam, scored at its current length, cannot beat the worst finished one) or "never" (same test, but scored at
max length when length_penalty > 0).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gensys.generate.stepper import Stepper

_NEG = -1.0e9  # "impossible" marker added to scores; finite so that sums and comparisons stay ordered


@dataclass
class StopCriteria:
    """When a row is finished: an EOS id, a token-level stop sequence, or (with a tokenizer) a stop string."""

    eos_token_ids: Tensor | None = None  # (E,)
    stop_token_ids: Sequence[Sequence[int]] = ()
    stop_strings: Sequence[str] = ()
    decode: Callable[[list[int]], str] | None = None
    prompt_length: int = 0
    # Caller-defined stops: seqs (N, T) -> bool (N,), True where a row is finished (e.g. a word limit).
    extra: Sequence[Callable[[Tensor], Tensor]] = ()
    _stop_seqs: list[Tensor] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.stop_strings and self.decode is None:
            raise ValueError("stop_strings need a tokenizer to decode the generated text")
        self._stop_seqs = [torch.tensor(list(s), dtype=torch.long) for s in self.stop_token_ids if len(s)]
        # A stop string of L characters spans at most 4 L byte-level tokens (one UTF-8 byte each) plus a
        # token that may carry extra text before it; decoding that tail is enough to spot it.
        self._tail = 4 * max((len(s) for s in self.stop_strings), default=0) + 1

    def __call__(self, seqs: Tensor) -> Tensor:
        """`seqs` (N, T) ends with the newest token; returns bool (N,) rows that are now finished."""
        n, t = seqs.shape
        done = torch.zeros(n, dtype=torch.bool, device=seqs.device)
        if self.eos_token_ids is not None:
            done |= torch.isin(seqs[:, -1], self.eos_token_ids.to(seqs.device))
        for stop in self._stop_seqs:
            k = stop.numel()
            if k <= t - self.prompt_length:  # the stop sequence must lie in the generated part
                done |= (seqs[:, t - k :] == stop.to(seqs.device)).all(dim=1)
        if self.stop_strings:
            start = max(self.prompt_length, t - self._tail)
            tails = seqs[:, start:].tolist()
            for i, tail in enumerate(tails):
                if not done[i]:
                    text = self.decode(tail)
                    done[i] = any(s in text for s in self.stop_strings)
        for fn in self.extra:
            done |= fn(seqs).to(done.device)
        return done


def run_to_end(gen: Generator[Any, None, Any]) -> Any:
    """Drive a strategy generator to completion and return its result."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# ------------------------------------------------------------------------------------- greedy / sample


@dataclass
class TokenStep:
    """One step of greedy / sampling: the token each row took (pad for rows already finished)."""

    step: int
    tokens: Tensor  # (N,)
    finished: Tensor  # (N,) bool, after this step
    was_finished: Tensor  # (N,) bool, before this step (those rows' token is padding)


@dataclass
class SampleResult:
    sequences: Tensor  # (N, T0 + steps) prompt + new tokens, pad after the end
    num_new_tokens: Tensor  # (N,) generated tokens per row, EOS / stop included
    token_logprobs: Tensor  # (N, steps) log-prob of each chosen token under the processed distribution
    scores: list[Tensor] | None  # per step (N, V) processed scores, when asked for


def sample_search(
    stepper: Stepper,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    processors: Callable[[Tensor, Tensor], Tensor],
    stop: StopCriteria,
    *,
    max_new_tokens: int,
    pad_token_id: int,
    do_sample: bool,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    num_return_sequences: int = 1,
    output_scores: bool = False,
    emit: bool = False,
) -> Generator[TokenStep, None, SampleResult]:
    """Greedy (argmax) or multinomial sampling; `processors` act on the raw logits (as in HF).

    Rows of `input_ids` (B, T0) are expanded to B * num_return_sequences after the single prefill. A list of
    generators gives each row its own random stream, so a row's sample does not depend on its batch.
    """
    logits = stepper.prefill(input_ids, attention_mask)  # (B, V)
    if num_return_sequences > 1:
        stepper.expand(num_return_sequences)
        logits = logits.repeat_interleave(num_return_sequences, dim=0)
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
    n, t0 = input_ids.shape
    if isinstance(generator, Sequence) and len(generator) != n:
        raise ValueError(f"got {len(generator)} generators for {n} rows")
    seqs = input_ids.new_full((n, t0 + max_new_tokens), pad_token_id)  # (N, T_max) filled as we go
    seqs[:, :t0] = input_ids
    dev = input_ids.device
    logprobs = torch.zeros(n, max_new_tokens, device=dev)
    finished = torch.zeros(n, dtype=torch.bool, device=dev)
    new_tokens = torch.zeros(n, dtype=torch.long, device=dev)
    all_scores: list[Tensor] | None = [] if output_scores else None
    steps = 0
    for s in range(max_new_tokens):
        cur = t0 + s
        scores = processors(seqs[:, :cur], logits)  # (N, V)
        if all_scores is not None:
            all_scores.append(scores)
        if do_sample:
            probs = scores.softmax(dim=-1)
            if isinstance(generator, Sequence):
                draws = [
                    torch.multinomial(probs[i : i + 1], 1, generator=g)[0] for i, g in enumerate(generator)
                ]
                nxt = torch.cat(draws)
            else:
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            nxt = scores.argmax(dim=-1)  # (N,)
        lp = scores.log_softmax(dim=-1).gather(1, nxt[:, None])[:, 0]
        was_finished = finished
        nxt = nxt.masked_fill(was_finished, pad_token_id)
        logprobs[:, s] = lp.masked_fill(was_finished, 0.0)
        seqs[:, cur] = nxt
        new_tokens += (~was_finished).long()
        finished = was_finished | stop(seqs[:, : cur + 1])
        steps = s + 1
        if emit:
            yield TokenStep(s, nxt, finished, was_finished)
        if bool(finished.all()) or steps == max_new_tokens:
            break
        logits = stepper.step(nxt)
    return SampleResult(seqs[:, : t0 + steps], new_tokens, logprobs[:, :steps], all_scores)


# ----------------------------------------------------------------------------------------- beam search


@dataclass
class BeamStep:
    """One step of beam search: per prompt, the best hypothesis so far (finished or still running)."""

    step: int
    best_tokens: list[list[int]]  # new tokens only
    best_scores: list[float]  # length-penalised
    best_finished: list[bool]


@dataclass
class BeamResult:
    sequences: Tensor  # (B, K, T) prompt + hypothesis, pad after its end; hypotheses sorted best first
    scores: Tensor  # (B, K) length-penalised sequence scores
    logprobs: Tensor  # (B, K) sum of processed log-probs (no length penalty)
    lengths: Tensor  # (B, K) generated tokens per hypothesis, EOS / stop included
    step_scores: list[Tensor] | None  # per step (B*K, V) processed log-probs, when asked for


def _take(t: Tensor, index: Tensor) -> Tensor:
    """Select along dim 1 of a (B, M, ...) tensor with index (B, K)."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def top_candidates(scores: Tensor, k: int, block: int = 128) -> tuple[Tensor, Tensor]:
    """`torch.topk(scores, k, dim=1)` (values, indices; sorted) for wide rows, 2-5x faster on CPU.

    The k best scores lie in the k blocks (of `block` columns) with the highest maxima: a block holding one of
    them has a maximum at least the k-th best, and at most k blocks can. So: block maxima, the k best blocks,
    then top-k over their k * block scores. Ties at the k-th place may pick other (equal) entries than
    torch.topk does, which orders ties unspecified anyway. Narrow rows go to torch.topk directly.
    """
    b, m = scores.shape
    if m < 8 * k * block:
        return torch.topk(scores, k, dim=1)
    pad = (-m) % block
    if pad:
        scores = torch.nn.functional.pad(scores, (0, pad), value=float("-inf"))
    blocks = scores.view(b, -1, block)  # (B, M / block, block)
    best = blocks.amax(dim=2).topk(k, dim=1).indices  # (B, k) blocks
    cand = blocks.gather(1, best[:, :, None].expand(b, k, block)).view(b, k * block)
    values, pos = cand.topk(k, dim=1)  # sorted, like torch.topk
    return values, best.gather(1, pos // block) * block + pos % block


def beam_search(
    stepper: Stepper,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    processors: Callable[[Tensor, Tensor], Tensor],
    stop: StopCriteria,
    *,
    num_beams: int,
    max_new_tokens: int,
    pad_token_id: int,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    n_eos: int = 1,
    output_scores: bool = False,
    emit: bool = False,
) -> Generator[BeamStep, None, BeamResult]:
    """Beam search with HF-compatible scoring; the prompt is computed once, its cache expanded to beams."""
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    b, t0 = input_ids.shape
    k = num_beams
    t_max = t0 + max_new_tokens
    n_cand = max(2, 1 + n_eos) * k  # candidates kept per step, so that k unfinished ones always remain

    logits = stepper.prefill(input_ids, attention_mask)  # (B, V): one prefill per prompt, not per beam
    stepper.expand(k)
    logits = logits.repeat_interleave(k, dim=0)  # (B*K, V)

    run_seqs = input_ids.new_full((b, k, t_max), pad_token_id)  # running hypotheses (B, K, T_max)
    run_seqs[:, :, :t0] = input_ids[:, None, :]
    dev = input_ids.device
    # Sum of log-probs per beam; only beam 0 is live at the start (the others are identical copies).
    run_scores = torch.zeros(b, k, device=dev)
    run_scores[:, 1:] = _NEG
    fin_seqs = run_seqs.clone()  # finished hypotheses, best first
    fin_scores = torch.full((b, k), _NEG, device=dev)
    fin_logprobs = torch.full((b, k), _NEG, device=dev)
    fin_lengths = torch.zeros(b, k, dtype=torch.long, device=dev)
    fin_done = torch.zeros(b, k, dtype=torch.bool, device=dev)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=dev)  # can a running beam beat a finished one?
    first_k = torch.arange(n_cand, device=dev) < k  # only the top k candidates may be finalised
    row_offset = torch.arange(b, device=dev)[:, None] * k  # (B, 1) flat row of beam 0 of each prompt
    identity = torch.arange(b * k, device=dev)
    step_scores: list[Tensor] | None = [] if output_scores else None
    any_finished = False  # has any hypothesis of any prompt finished yet?

    for s in range(max_new_tokens):
        cur = t0 + s
        logp = logits.log_softmax(dim=-1)  # (B*K, V)
        logp = processors(run_seqs.view(b * k, t_max)[:, :cur], logp)
        if step_scores is not None:
            step_scores.append(logp)
        vocab = logp.shape[-1]
        total = (logp.view(b, k, vocab) + run_scores[:, :, None]).view(b, k * vocab)
        cand_scores, cand_index = top_candidates(total, n_cand)  # (B, C) best first
        cand_parent = cand_index // vocab
        cand_seqs = _take(run_seqs, cand_parent)  # (B, C, T_max)
        cand_seqs[:, :, cur] = cand_index % vocab
        hits = stop(cand_seqs.view(b * n_cand, t_max)[:, : cur + 1]).view(b, n_cand)
        if cur + 1 >= t_max:
            hits = torch.ones_like(hits)

        # Next running beams: the best k candidates that did not just finish.
        live_scores = cand_scores + hits.float() * _NEG
        keep = torch.topk(live_scores, k, dim=1).indices  # (B, K)
        run_seqs = _take(cand_seqs, keep)
        run_scores = _take(live_scores, keep)
        parents = _take(cand_parent, keep)

        # Finished hypotheses: merge the candidates that just finished (and may still matter) into the n-best.
        # Most steps finish nothing: the merge is skipped then (it would only shuffle placeholder entries).
        gen_len = cur + 1 - t0
        just_done = hits & first_k[None, :]
        finished_now = bool(just_done.any())
        any_finished = any_finished or finished_now
        if finished_now:
            final = cand_scores / (gen_len**length_penalty)
            final = final + (fin_done.all(dim=1, keepdim=True) & (early_stopping is True)).float() * _NEG
            final = final + (~improvable).float() * _NEG
            final = final + (~just_done).float() * _NEG
            merged = torch.cat([fin_scores, final], dim=1)
            best = torch.topk(merged, k, dim=1).indices  # (B, K)
            fin_scores = _take(merged, best)
            fin_seqs = _take(torch.cat([fin_seqs, cand_seqs], dim=1), best)
            fin_logprobs = _take(torch.cat([fin_logprobs, cand_scores], dim=1), best)
            fin_lengths = _take(torch.cat([fin_lengths, torch.full_like(cand_parent, gen_len)], dim=1), best)
            fin_done = _take(torch.cat([fin_done, just_done], dim=1), best)

        flat_parents = (parents + row_offset).view(-1)  # (B*K,)
        if not torch.equal(flat_parents, identity):  # beams often keep their parent; skip the cache copy then
            stepper.reorder(flat_parents)

        # Could the best running beam still beat the worst finished one? (HF's heuristic, see module doc.)
        # Until some hypothesis has finished every prompt can still improve, and no row can be all done
        # (an all-finished step finishes first_k candidates too): no check, and no sync, is needed then.
        cur += 1
        if any_finished:
            if early_stopping == "never" and length_penalty > 0.0:
                best_len = t_max - t0
            else:
                best_len = cur - t0
            best_running = run_scores[:, :1] / (best_len**length_penalty)
            worst_done = torch.where(fin_done, fin_scores.min(dim=1, keepdim=True).values, _NEG)
            improvable = improvable & (best_running > worst_done).any(dim=1, keepdim=True)

        if emit:
            yield _best_so_far(
                s, run_seqs, run_scores, fin_seqs, fin_scores, fin_lengths, fin_done, t0, cur, length_penalty
            )
        if any_finished:
            more = bool(improvable.any()) and not (early_stopping is True and bool(fin_done.all()))
            if not more or bool(hits.all()):
                break
        logits = stepper.step(run_seqs[:, :, cur - 1].reshape(b * k))

    gen_max = int(fin_lengths.max())
    return BeamResult(fin_seqs[:, :, : t0 + gen_max], fin_scores, fin_logprobs, fin_lengths, step_scores)


def _best_so_far(
    s: int,
    run_seqs: Tensor,
    run_scores: Tensor,
    fin_seqs: Tensor,
    fin_scores: Tensor,
    fin_lengths: Tensor,
    fin_done: Tensor,
    t0: int,
    cur: int,
    length_penalty: float,
) -> BeamStep:
    """Per prompt, the better of the best finished hypothesis and the best running beam (length-penalised)."""
    run_best = run_scores[:, 0] / ((cur - t0) ** length_penalty)  # (B,)
    use_fin = fin_done[:, 0] & (fin_scores[:, 0] >= run_best)
    tokens, scores, done = [], [], []
    for i in range(run_seqs.shape[0]):
        if bool(use_fin[i]):
            tokens.append(fin_seqs[i, 0, t0 : t0 + int(fin_lengths[i, 0])].tolist())
            scores.append(float(fin_scores[i, 0]))
            done.append(True)
        else:
            tokens.append(run_seqs[i, 0, t0:cur].tolist())
            scores.append(float(run_best[i]))
            done.append(False)
    return BeamStep(s, tokens, scores, done)


__all__ = [
    "BeamResult",
    "BeamStep",
    "SampleResult",
    "StopCriteria",
    "TokenStep",
    "beam_search",
    "run_to_end",
    "top_candidates",
    "sample_search",
]
