"""Glue shared by the chat stages: run-directory layout, tokenizer, loading checkpoints, sampling, scoring."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gensys.apps.chat.config import Config
from gensys.apps.chat.template import Message, render_prompt
from gensys.checkpoint import load_checkpoint
from gensys.data.atomic import atomic_write_text
from gensys.data.batching import pad_batch
from gensys.data.tokenizer import Tokenizer, train_bpe
from gensys.errors import CheckpointError
from gensys.generate import GenerationConfig, generate
from gensys.models.decoder_lm import DecoderLM
from gensys.models.heads import RewardModel
from gensys.train.config import TrainConfig

PREVIOUS = {"sft": "pretrain", "reward": "sft", "ppo": "sft", "dpo": "sft"}


def log(msg: str) -> None:
    """Progress line on stderr (stdout stays for JSON results)."""
    print(f"[chat {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stage_dir(cfg: Config, stage: str) -> Path:
    return Path(cfg.run_dir) / stage


def stage_train_config(cfg: Config, stage: str, train: TrainConfig) -> TrainConfig:
    """The stage's TrainConfig with `out_dir` = <run_dir>/<stage>."""
    return dataclasses.replace(train, out_dir=str(stage_dir(cfg, stage)))


def stage_checkpoint(cfg: Config, stage: str) -> Path:
    """The checkpoint a finished stage hands on: best/ when the stage kept one, else last/."""
    d = stage_dir(cfg, stage)
    for kind in ("best", "last"):
        if (d / kind / "config.json").is_file():
            return d / kind
    raise CheckpointError(
        f"no checkpoint of stage '{stage}' under {d}: run `gensys chat train stage={stage}` first"
    )


def init_checkpoint(cfg: Config, stage: str, init_from: str) -> Path:
    """Where `stage` starts: its `init_from`, or the previous stage's checkpoint in the run directory."""
    return Path(init_from) if init_from else stage_checkpoint(cfg, PREVIOUS[stage])


def is_done(cfg: Config, stage: str) -> bool:
    return (stage_dir(cfg, stage) / "done.json").is_file()


def mark_done(cfg: Config, stage: str, summary: dict[str, Any]) -> None:
    """Write <run_dir>/<stage>/done.json (the stage's figures; `stage=all` skips stages that have one)."""
    atomic_write_text(stage_dir(cfg, stage) / "done.json", json.dumps(summary, indent=2) + "\n")


def last_value(metrics_path: str | Path, key: str) -> float:
    """The last value of `key` in a trainer's metrics.jsonl (NaN if it was never logged)."""
    from gensys.train.monitor import read_metrics

    values = [r[key] for r in read_metrics(metrics_path) if key in r]
    return float(values[-1]) if values else float("nan")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------------------
# tokenizer and checkpoints


def tokenizer_path(cfg: Config) -> Path:
    return Path(cfg.tokenizer.path) if cfg.tokenizer.path else Path(cfg.run_dir) / "tokenizer.json"


def train_tokenizer(cfg: Config, texts: Sequence[str]) -> Tokenizer:
    """Byte-level BPE with the role tokens on a seeded sample of `texts` (at most tokenizer.max_chars)."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    sample, n = [], 0
    for i in order:
        if n >= cfg.tokenizer.max_chars:
            break
        sample.append(texts[i])
        n += len(texts[i])
    tok = train_bpe(sample, cfg.tokenizer.vocab_size, min_frequency=cfg.tokenizer.min_frequency)
    path = tokenizer_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(path)
    return tok


def load_lm(path: str | Path, device: torch.device | str = "cpu") -> tuple[DecoderLM, Tokenizer]:
    """A decoder-LM checkpoint (pretrain / SFT / PPO / DPO) with its tokenizer."""
    model, config, tok = load_checkpoint(path, map_location=device)
    if config.get("family") != "decoder_lm" or tok is None:
        raise CheckpointError(f"{path}: expected a decoder_lm checkpoint with tokenizer.json")
    return model, tok  # type: ignore[return-value]


def load_reward_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[RewardModel, Tokenizer]:
    """A reward-model checkpoint (family "reward") with its tokenizer."""
    model, config, tok = load_checkpoint(path, map_location=device)
    if config.get("family") != "reward" or tok is None:
        raise CheckpointError(f"{path}: expected a reward-model checkpoint with tokenizer.json")
    return model, tok  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------
# sampling and scoring


def end_ids(tok: Tokenizer) -> list[int]:
    """Tokens that end a reply: <|end|> (what SFT teaches) and <eos>."""
    return [tok.special_id("end"), tok.eos_id]


def strip_end(tokens: Sequence[int], stops: Sequence[int]) -> tuple[list[int], bool]:
    """(reply tokens without the stop token, whether the reply ended by itself)."""
    toks = list(tokens)
    if toks and toks[-1] in stops:
        return toks[:-1], True
    return toks, False


def sample_replies(
    model: DecoderLM,
    tok: Tokenizer,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int = 0,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> list[list[int]]:
    """Sampled reply tokens per prompt (ending with <|end|>/<eos> when the model stopped by itself)."""
    device = next(model.parameters()).device
    ids, mask = pad_batch(prompts, tok.pad_id, side="left")  # (B, T0)
    gen_cfg = GenerationConfig(
        strategy="sample",
        max_new_tokens=max_new_tokens,
        temperature=temperature if temperature != 1.0 else None,
        top_k=top_k or None,
        eos_token_id=end_ids(tok),
        pad_token_id=tok.pad_id,
    )
    out = generate(model, ids.to(device), mask.to(device), gen_cfg, generator=generator)
    return [h.tokens for hyps in out.nbest for h in hyps]


def scoring_ids(tok: Tokenizer, prompt: list[int], reply: Sequence[int]) -> list[int]:
    """What the reward model reads: prompt + reply + <|end|> (added when the reply was cut off, so every
    scored sequence ends the way the RM's training pairs do; the cut itself is penalised separately)."""
    body, _ = strip_end(reply, end_ids(tok))
    return [*prompt, *body, tok.special_id("end")]


@torch.no_grad()
def score(rm: RewardModel, rows: Sequence[list[int]], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """Reward-model scores (N,) of full sequences (right-padded, read at each row's last token)."""
    device = next(rm.parameters()).device
    out = []
    for s in range(0, len(rows), batch_size):
        ids, mask = pad_batch(rows[s : s + batch_size], pad_id, side="right")
        out.append(rm(ids.to(device), attention_mask=mask.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def prompt_ids(tok: Tokenizer, messages: Sequence[Message], max_len: int) -> list[int]:
    return render_prompt(tok, messages, max_len)


def repeated_ngram_share(tokens: Sequence[int], n: int = 3) -> float:
    """Share of a reply's n-grams that already occurred earlier in it (0 = no repetition)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def length_slope(scores: torch.Tensor, lengths: torch.Tensor) -> float:
    """Least-squares slope of score on length (0 if the lengths do not vary): the RM's linear length
    preference, removed by PPO's length guard and by the length-controlled win rate."""
    x = lengths.double() - lengths.double().mean()
    denom = float((x * x).sum())
    return float((x * (scores.double() - scores.double().mean())).sum()) / denom if denom > 0 else 0.0
