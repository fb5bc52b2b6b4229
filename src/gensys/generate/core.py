"""`GenerationConfig` + `generate()`: one entry point for every strategy and every model kind.

    cfg = GenerationConfig(strategy="beam", num_beams=4, eos_token_id=2)
    out = generate(model, input_ids, attention_mask, cfg)
    out.sequences, out.sequences_scores, out.nbest[0][0].tokens

Knobs default to None ("not set"). A knob that does not apply to the chosen strategy (top_k with greedy,
length_penalty with sampling, ...) is an error, never silently ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from gensys.generate.processors import (
    BEAM,
    GREEDY,
    SAMPLE,
    BadWords,
    GenerationConfigError,
    LogitsProcessor,
    MinNewTokens,
    MinP,
    NoRepeatNGram,
    ProcessorList,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    check_applicable,
)
from gensys.generate.search import (
    BeamResult,
    BeamStep,
    SampleResult,
    StopCriteria,
    TokenStep,
    beam_search,
    run_to_end,
    sample_search,
)
from gensys.generate.stepper import StaticStepper, Stepper, make_stepper, supports_static
from gensys.nn.layers import decoding


class Detokenizer(Protocol):
    """Anything with `decode(ids) -> str` (gensys.data.tokenizer.Tokenizer, tokenizers.Tokenizer)."""

    def decode(self, ids: list[int]) -> str: ...


DECODE_PATHS = ("auto", "modules", "static", "compiled")


@dataclass
class GenerationConfig:
    """Decoding settings. `strategy` picks greedy / sample / beam; the other knobs must fit it."""

    strategy: Literal["greedy", "sample", "beam"] = "greedy"
    max_new_tokens: int = 32
    min_new_tokens: int = 0  # EOS is forbidden before this many new tokens (needs eos_token_id)
    # beam search only
    num_beams: int | None = None  # default 4 for beam search
    length_penalty: float | None = None  # score = sum logprob / new_len ** length_penalty; default 1.0
    early_stopping: bool | Literal["never"] | None = None  # default False (HF's heuristic), see search.py
    num_return_sequences: int = 1  # beam: n-best size (<= num_beams); sample: samples per prompt
    # sampling only
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    # every strategy
    repetition_penalty: float | None = None
    penalize_prompt: bool = True  # False: the repetition penalty only counts generated tokens
    no_repeat_ngram_size: int | None = None
    bad_words_ids: list[list[int]] | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    stop_token_ids: list[list[int]] | None = None  # token-level stop sequences (kept in the output tokens)
    stop_strings: list[str] | None = None  # text-level stops (need a tokenizer); the text is cut before them
    decoder_start_token_id: int | None = None  # encoder-decoder: first decoder token when no prompt is given
    # How each step runs the model: "modules" (the model's forward with a growing KVCache), "static" (one
    # fixed-shape function over preallocated buffers, gensys.nn.static_decode), "compiled" (that function
    # traced and compiled by Inductor once per rows x capacity) or "auto" (static where the model offers it).
    decode_path: Literal["auto", "modules", "static", "compiled"] = "auto"

    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    def validate(self) -> None:
        """Raise GenerationConfigError naming the first knob that is invalid for this strategy."""
        s = self.strategy
        if s not in (GREEDY, SAMPLE, BEAM):
            raise GenerationConfigError(f"strategy must be greedy, sample or beam, got {s!r}")
        if self.max_new_tokens < 1:
            raise GenerationConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise GenerationConfigError(
                f"min_new_tokens must be in [0, max_new_tokens]: {self.min_new_tokens}"
            )
        if self.min_new_tokens and not self.eos_ids():
            raise GenerationConfigError("min_new_tokens needs eos_token_id (it works by forbidding EOS)")
        for knob in ("num_beams", "length_penalty", "early_stopping"):
            if s != BEAM and getattr(self, knob) is not None:
                raise GenerationConfigError(f"{knob} applies only to strategy 'beam', not {s!r}")
        if s != SAMPLE and self.seed is not None:
            raise GenerationConfigError(f"seed applies only to strategy 'sample', not {s!r}")
        if self.num_return_sequences < 1:
            raise GenerationConfigError("num_return_sequences must be >= 1")
        if s == GREEDY and self.num_return_sequences != 1:
            raise GenerationConfigError(
                "greedy search returns one sequence per prompt; num_return_sequences=1"
            )
        if s == BEAM:
            if self.beams() < 1:
                raise GenerationConfigError(f"num_beams must be >= 1, got {self.num_beams}")
            if self.num_return_sequences > self.beams():
                raise GenerationConfigError(
                    f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams {self.beams()}"
                )
        if self.decode_path not in DECODE_PATHS:
            raise GenerationConfigError(f"decode_path must be one of {DECODE_PATHS}: {self.decode_path!r}")
        if self.early_stopping not in (None, True, False, "never"):
            raise GenerationConfigError(
                f"early_stopping must be true, false or 'never': {self.early_stopping!r}"
            )
        # Sampling filters are checked through the processors they build.
        check_applicable(build_processors(self, prompt_length=0), s)

    def beams(self) -> int:
        return 4 if self.num_beams is None else self.num_beams

    def replace(self, **changes: Any) -> GenerationConfig:
        return dataclasses.replace(self, **changes)


def build_processors(
    cfg: GenerationConfig, prompt_length: int, pad_counts: Tensor | None = None
) -> ProcessorList:
    """The processors `cfg` asks for, in HF's order (penalties and constraints, then sampling filters).

    `pad_counts` (N,) is the number of left-pad positions of each row (None = no padding).
    """
    procs = ProcessorList()
    eos = cfg.eos_ids()
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0:
        start = pad_counts if cfg.penalize_prompt else prompt_length
        procs.append(RepetitionPenalty(cfg.repetition_penalty, start=start))
    if cfg.no_repeat_ngram_size:
        procs.append(NoRepeatNGram(cfg.no_repeat_ngram_size, start=pad_counts))
    if cfg.bad_words_ids:
        procs.append(BadWords(cfg.bad_words_ids, eos_token_id=eos or None))
    if cfg.min_new_tokens and eos:
        procs.append(MinNewTokens(cfg.min_new_tokens, eos, prompt_length))
    if cfg.temperature is not None:
        procs.append(Temperature(cfg.temperature))
    if cfg.top_k is not None:
        procs.append(TopK(cfg.top_k))
    if cfg.top_p is not None:
        procs.append(TopP(cfg.top_p))
    if cfg.min_p is not None:
        procs.append(MinP(cfg.min_p))
    return procs


@dataclass
class Hypothesis:
    """One continuation: tokens (EOS / stop included), scores, and its text when a tokenizer was given."""

    tokens: list[int]
    score: float  # beam: length-penalised log-prob; greedy / sample: sum of token log-probs
    logprob: float  # sum of the (processed) log-probs of its tokens
    text: str | None = None


@dataclass
class GenerationOutput:
    """Result of `generate`. Rows are prompt-major: row b * R + r is return sequence r of prompt b."""

    sequences: Tensor  # (B*R, T) prompt (decoder prompt for encoder-decoders) + new tokens, pad after the end
    sequences_scores: Tensor  # (B*R,) see Hypothesis.score
    num_new_tokens: Tensor  # (B*R,)
    nbest: list[list[Hypothesis]]  # per prompt, best first for beam search
    prompt_length: int  # padded prompt length T0: new tokens are sequences[:, T0:]
    scores: list[Tensor] | None = None  # per step (B*R', V) processed scores (log-probs for beam), if asked
    token_logprobs: Tensor | None = None  # (B*R, steps) greedy / sample: log-prob of each chosen token
    texts: list[str] | None = None  # per row, EOS dropped and cut before a stop string

    @property
    def new_tokens(self) -> list[list[int]]:
        return [h.tokens for hyps in self.nbest for h in hyps]


def _left_pad_counts(attention_mask: Tensor | None) -> Tensor | None:
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    if bool(mask.all()):
        return None
    counts = (~mask).sum(dim=1)  # (B,)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, positions[None, :] >= counts[:, None]):
        raise GenerationConfigError("attention_mask must be left-padded (zeros before the real tokens)")
    return counts


def _text(tokenizer: Detokenizer, tokens: list[int], eos: list[int], stops: Sequence[str]) -> str:
    text = tokenizer.decode([t for t in tokens if t not in eos])
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def _first_tensor(encoder_inputs: Sequence[Any] | Mapping[str, Any]) -> Tensor:
    """The first tensor among the encoder inputs: its batch size and device set the decoder prompt's."""
    values = encoder_inputs.values() if isinstance(encoder_inputs, Mapping) else encoder_inputs
    for v in values:
        if isinstance(v, Tensor):
            return v
    raise ValueError("cannot infer the batch size: pass input_ids (the decoder prompt)")


@torch.inference_mode()
def _no_grad(search: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    # As a decorated generator, inference mode is on only while the search runs, not while a streaming
    # caller handles an event between two steps.
    return (yield from search)


def generate_steps(
    model: nn.Module | None,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    config: GenerationConfig | None = None,
    *,
    encoder_inputs: Sequence[Any] | Mapping[str, Any] | None = None,
    memory_mask: Tensor | None = None,
    processors: Sequence[LogitsProcessor] = (),
    tokenizer: Detokenizer | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    stepper: Stepper | None = None,
    output_scores: bool = False,
    emit: bool = True,
    stopping: Sequence[Callable[[Tensor], Tensor]] = (),
) -> Generator[TokenStep | BeamStep, None, GenerationOutput]:
    """`generate` as a generator of per-step events (see `gensys.generate.stream` for text deltas)."""
    cfg = config or GenerationConfig()
    cfg.validate()
    check_applicable(processors, cfg.strategy)
    if stepper is None:
        if model is None:
            raise ValueError("pass a model or a stepper")
        stepper = make_stepper(model, encoder_inputs, memory_mask)
        path = cfg.decode_path
        if path == "auto":
            path = "static" if supports_static(model) else "modules"
        elif path != "modules" and not supports_static(model):
            raise ValueError(
                f"decode_path={path!r}: {type(model).__name__} has no fixed-shape decode step (e.g. relative "
                "position biases); use 'modules' or 'auto'"
            )
        if path != "modules":
            stepper = StaticStepper(stepper, cfg.max_new_tokens, compile=path == "compiled")
    if input_ids is None:
        if cfg.decoder_start_token_id is None or encoder_inputs is None:
            raise ValueError("input_ids is required (or encoder_inputs + decoder_start_token_id)")
        src = _first_tensor(encoder_inputs)
        input_ids = torch.full(
            (src.shape[0], 1), cfg.decoder_start_token_id, dtype=torch.long, device=src.device
        )
    eos = cfg.eos_ids()
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    pad_counts = _left_pad_counts(attention_mask)
    t0 = input_ids.shape[1]
    # Rows are expanded (beams / samples) after the prefill; per-row processor state follows that layout.
    rows = cfg.beams() if cfg.strategy == BEAM else cfg.num_return_sequences
    row_pads = None if pad_counts is None else pad_counts.repeat_interleave(rows)
    procs = build_processors(cfg, t0, row_pads)
    procs.extend(processors)
    decode = None if tokenizer is None else tokenizer.decode
    stop = StopCriteria(
        eos_token_ids=torch.tensor(eos, dtype=torch.long, device=input_ids.device) if eos else None,
        stop_token_ids=cfg.stop_token_ids or (),
        stop_strings=cfg.stop_strings or (),
        decode=decode,
        prompt_length=t0,
        extra=stopping,
    )
    if cfg.strategy == SAMPLE and generator is None and cfg.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(cfg.seed)

    if cfg.strategy == BEAM:
        search = beam_search(
            stepper, input_ids, attention_mask, procs, stop,
            num_beams=cfg.beams(), max_new_tokens=cfg.max_new_tokens, pad_token_id=pad,
            length_penalty=1.0 if cfg.length_penalty is None else cfg.length_penalty,
            early_stopping=False if cfg.early_stopping is None else cfg.early_stopping,
            n_eos=len(eos), output_scores=output_scores, emit=emit,
        )  # fmt: skip
    else:
        search = sample_search(
            stepper, input_ids, attention_mask, procs, stop,
            max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, do_sample=cfg.strategy == SAMPLE,
            generator=generator, num_return_sequences=cfg.num_return_sequences,
            output_scores=output_scores, emit=emit,
        )  # fmt: skip
    was_training = model is not None and model.training
    if model is not None:
        model.eval()  # dropout off while decoding; restored below
    try:
        with decoding(model) if model is not None else contextlib.nullcontext():
            result = yield from _no_grad(search)
    finally:
        if was_training:
            model.train()
    stops = cfg.stop_strings or ()
    if isinstance(result, BeamResult):
        return _beam_output(result, cfg.num_return_sequences, t0, tokenizer, eos, stops)
    return _sample_output(result, cfg.num_return_sequences, t0, tokenizer, eos, stops)


def _beam_output(
    r: BeamResult, n_ret: int, t0: int, tokenizer: Detokenizer | None, eos: list[int], stops: Sequence[str]
) -> GenerationOutput:
    b = r.sequences.shape[0]
    lengths = r.lengths[:, :n_ret]  # (B, R)
    seqs = r.sequences[:, :n_ret, : t0 + int(lengths.max())].reshape(b * n_ret, -1)
    nbest = []
    for i in range(b):
        hyps = []
        for j in range(n_ret):
            toks = r.sequences[i, j, t0 : t0 + int(lengths[i, j])].tolist()
            text = None if tokenizer is None else _text(tokenizer, toks, eos, stops)
            hyps.append(Hypothesis(toks, float(r.scores[i, j]), float(r.logprobs[i, j]), text))
        nbest.append(hyps)
    texts = None if tokenizer is None else [h.text for hyps in nbest for h in hyps]
    return GenerationOutput(
        sequences=seqs,
        sequences_scores=r.scores[:, :n_ret].reshape(-1),
        num_new_tokens=lengths.reshape(-1),
        nbest=nbest,
        prompt_length=t0,
        scores=r.step_scores,
        texts=texts,
    )


def _sample_output(
    r: SampleResult, n_ret: int, t0: int, tokenizer: Detokenizer | None, eos: list[int], stops: Sequence[str]
) -> GenerationOutput:
    seq_scores = r.token_logprobs.sum(dim=1)  # finished rows contribute 0 after their end
    nbest: list[list[Hypothesis]] = []
    for row in range(r.sequences.shape[0]):
        toks = r.sequences[row, t0 : t0 + int(r.num_new_tokens[row])].tolist()
        text = None if tokenizer is None else _text(tokenizer, toks, eos, stops)
        hyp = Hypothesis(toks, float(seq_scores[row]), float(seq_scores[row]), text)
        if row % n_ret == 0:
            nbest.append([])
        nbest[-1].append(hyp)
    texts = None if tokenizer is None else [h.text for hyps in nbest for h in hyps]
    return GenerationOutput(
        sequences=r.sequences,
        sequences_scores=seq_scores,
        num_new_tokens=r.num_new_tokens,
        nbest=nbest,
        prompt_length=t0,
        scores=r.scores,
        token_logprobs=r.token_logprobs,
        texts=texts,
    )


def generate(
    model: nn.Module | None,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    config: GenerationConfig | None = None,
    *,
    encoder_inputs: Sequence[Any] | Mapping[str, Any] | None = None,
    memory_mask: Tensor | None = None,
    processors: Sequence[LogitsProcessor] = (),
    tokenizer: Detokenizer | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    stepper: Stepper | None = None,
    output_scores: bool = False,
    stopping: Sequence[Callable[[Tensor], Tensor]] = (),
) -> GenerationOutput:
    """Decode continuations of `input_ids` (B, T) (left-padded with `attention_mask`) under `config`.

    Decoder-only models continue the prompt. Encoder-decoder models (`encode`/`decode`) take their source
    through `encoder_inputs` (args of `model.encode`) and `memory_mask` (B, S); `input_ids` is then the
    decoder prompt, by default one `decoder_start_token_id` per row. `processors` adds custom logits
    processors after the configured ones; `generator` overrides `config.seed` (a list gives each row its own
    stream). With `output_scores` the per-step processed scores are kept (HF's `output_scores`). `stopping`
    adds custom stop criteria: each maps the sequences so far (N, T), prompt included, to a bool (N,) of rows
    that are finished with their newest token (like a stop string).
    """
    gen = generate_steps(
        model, input_ids, attention_mask, config,
        encoder_inputs=encoder_inputs, memory_mask=memory_mask, processors=processors, tokenizer=tokenizer,
        generator=generator, stepper=stepper, output_scores=output_scores, emit=False, stopping=stopping,
    )  # fmt: skip
    return run_to_end(gen)


__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "Hypothesis",
    "build_processors",
    "generate",
    "generate_steps",
]
