"""Typed configuration of the Smart Compose system (`configs/compose/{tiny,demo,quality}.yaml`).

One `Config` nests the data preparation, the decoder LM, the trainer, the serving pipeline (triggering, phrase
generation, filtering), the n-gram baseline and the evaluation. Every key can be overridden on the command
line as `section.key=value`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gensys.models.decoder_lm import DecoderLMConfig
from gensys.train.config import TrainConfig


@dataclass
class DataConfig:
    """Where AESLC lives, how it is cleaned and tokenised, and how a training example is laid out."""

    data_dir: str = ""  # "" = the repo's data/ (or $GENSYS_DATA)
    train_file: str = "compose/aeslc_train.jsonl.gz"
    dev_file: str = "compose/aeslc_dev.jsonl.gz"
    test_file: str = "compose/aeslc_test.jsonl.gz"
    prepared_dir: str = "runs/compose/prepared"  # cleaned splits + tokenizer.json written by `prepare`
    max_train_emails: int = 0  # 0 = all (tests use a few hundred)
    max_eval_emails: int = 0  # cap on dev/test emails kept by `prepare`; 0 = all
    min_body_words: int = 3  # shorter bodies carry no phrase to complete
    vocab_size: int = 8000
    # Example layout: <bos> subject <sep> previous email <sep> body <eos>; loss on body + <eos> only.
    subject_max_tokens: int = 24
    previous_max_tokens: int = 64
    # AESLC has no reply threads: with this probability a training example borrows the preceding email of the
    # same mailbox folder as its "previous email", so the model sees the slot filled (see docs/compose.md).
    previous_prob: float = 0.2
    max_seq_len: int = 256  # tokens per training example (context + body; longer bodies are cut)

    def __post_init__(self) -> None:
        if not 0.0 <= self.previous_prob <= 1.0:
            raise ValueError(f"previous_prob must be in [0, 1], got {self.previous_prob}")
        if self.max_seq_len < self.subject_max_tokens + self.previous_max_tokens + 8:
            raise ValueError("max_seq_len must leave room for the body after subject and previous email")


@dataclass
class SuggestConfig:
    """The serving pipeline: triggering, beam search, filtering and post-processing."""

    # Triggering (before any model call).
    min_prefix_words: int = 1  # words typed in the body before the first suggestion
    allow_partial_words: bool = True  # suggest while a word is half typed (the suggestion completes it)
    max_partial_chars: int = 20  # a longer "word" is a URL, an id, ...: no suggestion
    max_text_chars: int = 65536  # longer text is a client error (4xx), not something to tokenise
    max_subject_chars: int = 1000
    max_previous_chars: int = 65536
    debounce_ms: int = 80  # hint for clients: wait this long after the last keystroke before asking
    latency_budget_ms: float = 150.0  # a request still decoding after this gives up (0 = no budget)
    # Phrase generation (beam search over gensys.generate).
    num_beams: int = 4
    # Rows (drafts x beams) one batched call may decode: with more concurrent drafts each gets fewer beams
    # (at least min_beams). 0 = always num_beams. docs/compose.md has its effect on latency and ExactMatch.
    max_beam_rows: int = 8
    min_beams: int = 1  # the fewest beams per draft that max_beam_rows may leave (1: greedy under load)
    max_new_tokens: int = 10
    max_context_tokens: int = 256  # prompt window (subject + previous + body so far)
    # Filtering.
    max_words: int = 5
    # Finish a beam hypothesis once it has begun word max_words + 1 instead of decoding to max_new_tokens
    # (what follows would be cut anyway).
    stop_at_max_words: bool = True
    long_policy: Literal["truncate", "drop"] = "truncate"  # what happens to a candidate beyond max_words
    min_confidence: float = 0.35  # exp(mean token log-prob); `calibration.json` in a checkpoint overrides it
    target_trigger_rate: float = 0.2  # what calibration on dev aims at
    block_gendered: bool = True  # no he/she/his/her/... guesses about people
    # Mix the checkpoint's memory (an ∞-gram index of the training emails, see apps/compose/memory.py) into
    # the LM at every decoding step, when the checkpoint has one.
    use_memory: bool = True
    # Incremental serving.
    session_cache_size: int = 256  # drafts whose KV cache is kept (least recently used are dropped)

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_new_tokens < 1 or self.max_words < 1 or self.min_beams < 1:
            raise ValueError("num_beams, min_beams, max_new_tokens and max_words must be >= 1")
        if self.max_beam_rows < 0:
            raise ValueError(f"max_beam_rows must be >= 0 (0 = no limit), got {self.max_beam_rows}")
        if not 0.0 < self.target_trigger_rate <= 1.0:
            raise ValueError(f"target_trigger_rate must be in (0, 1], got {self.target_trigger_rate}")


@dataclass
class NgramConfig:
    """The n-gram baseline: word n-grams with interpolated absolute-discounting backoff."""

    enabled: bool = True  # `train` also builds the baseline
    order: int = 4
    min_count: int = 2  # n-grams of order >= 2 seen fewer times are pruned (unigrams are all kept)
    discount: float = 0.75
    beam: int = 3  # word-level beam width


@dataclass
class MemoryConfig:
    """The ∞-gram memory of the training emails that `train` adds to the exported checkpoint."""

    enabled: bool = True
    max_match: int = 32  # longest suffix (tokens) looked up; longer matches count as this long
    fit_emails: int = 300  # dev emails whose tokens fit the interpolation weights
    min_positions: int = 200  # dev tokens per fitted weight (rare match lengths share one)

    def __post_init__(self) -> None:
        if self.max_match < 1 or self.min_positions < 1:
            raise ValueError("memory.max_match and memory.min_positions must be >= 1")


@dataclass
class EvalConfig:
    """What `gensys compose eval` measures and on how much data."""

    test_emails: int = 100  # emails whose every word boundary is scored (0 = all 1766: hours on a CPU)
    test_start: int = 0  # skip this many test emails first (a second sample: test_start=100)
    dev_emails: int = 50  # dev emails used to calibrate the confidence threshold
    ppl_emails: int = 0  # test emails for perplexity (0 = all)
    ppl_batch_size: int = 16
    target_trigger_rate: float = 0.2
    max_n: int = 5  # ExactMatch@1..max_n
    # Emails walked in lockstep, their keystrokes batched into one call: faster, the same suggestions, but the
    # latency figures are then of batched calls (keep 1 to measure one user's keystrokes).
    drafts_at_once: int = 1
    out_dir: str = "runs/compose/eval"


def _model() -> DecoderLMConfig:
    return DecoderLMConfig(
        vocab_size=8000,
        d_model=256,
        n_layers=4,
        n_heads=4,
        d_ff=768,
        max_seq_len=256,
        pos="learned",
        norm="layernorm",
        activation="gelu",
        attn_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        dropout=0.0,
    )


def _train() -> TrainConfig:
    return TrainConfig(
        lr=1e-3, warmup_steps=50, max_steps=1000, micro_batch_size=16, out_dir="runs/compose/train"
    )


@dataclass
class Config:
    """Everything `gensys compose prepare|train|eval|predict` reads."""

    data: DataConfig = field(default_factory=DataConfig)
    model: DecoderLMConfig = field(default_factory=_model)
    train: TrainConfig = field(default_factory=_train)
    suggest: SuggestConfig = field(default_factory=SuggestConfig)
    ngram: NgramConfig = field(default_factory=NgramConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export_dir: str = ""  # after training: an fp16 copy with calibration.json here (models/compose for demo)
    calibrate_emails: int = 30  # dev emails used by `train` to calibrate the exported threshold


__all__ = ["Config", "DataConfig", "EvalConfig", "MemoryConfig", "NgramConfig", "SuggestConfig"]
