"""The phrase generator's memory: an ∞-gram index of the training emails, interpolated with the LM.

A 5M-parameter LM trained for a few epochs does not reproduce a paragraph it saw once (a recurring notice, a
signature block, a standard reply), while a counting model does so exactly. The memory gives the LM that
ability: at each decoding step the longest suffix of the draft found in the training bodies (n tokens) and
the tokens that followed it give a distribution that is mixed into the LM's with a weight w[n]
(`gensys.generate.processors.CorpusFusion`). The weights are fitted on dev emails by likelihood
(`fit_match_weights`): short matches get little weight, matches of a dozen tokens or more almost all.

Files in a checkpoint: `memory.safetensors` (token stream + suffix array) and `memory.json` (weights, and
the dev perplexity with and without the memory).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gensys.apps.compose.config import DataConfig, MemoryConfig
from gensys.apps.compose.data import Email, LMExamples, collate
from gensys.data.atomic import atomic_write_text
from gensys.data.tokenizer import Tokenizer
from gensys.errors import CheckpointError
from gensys.models.decoder_lm import DecoderLM
from gensys.models.infinigram import InfiniGram, fit_match_weights

MEMORY_FILE = "memory.safetensors"
MEMORY_META = "memory.json"


def memory_docs(emails: list[Email], tok: Tokenizer) -> list[list[int]]:
    """`<sep> body <eos>` per email: the body as the LM sees it after its context, framed so that a match
    stops at the start of a body (the LM's prompt has `<sep>` there, the stream the previous `<eos>`)."""
    sep = tok.special_id("sep")
    return [[sep, *body, tok.eos_id] for body in tok.encode_batch([e.body for e in emails])]


def build_memory(emails: list[Email], tok: Tokenizer, max_match: int) -> InfiniGram:
    """The ∞-gram index of the bodies of `emails`."""
    return InfiniGram.build(memory_docs(emails, tok), max_match=max_match)


@torch.inference_mode()
def held_out_positions(
    model: DecoderLM, tok: Tokenizer, index: InfiniGram, emails: list[Email], data_cfg: DataConfig
) -> dict[str, np.ndarray]:
    """Per body token of `emails` (given their subjects): the match length, and the probability the LM and
    the memory gave the token that came. Arrays `match_len`, `p_model`, `p_corpus`."""
    data = LMExamples(emails, tok, dataclasses.replace(data_cfg, previous_prob=0.0))
    match_len: list[int] = []
    p_model: list[float] = []
    p_corpus: list[float] = []
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    for s in range(0, len(order), 16):
        items = [data[i] for i in order[s : s + 16]]
        batch = collate(items, tok.pad_id)
        logp = model(batch["input_ids"]).float().log_softmax(dim=-1)  # (B, T, V)
        for b, (ids, ctx_len) in enumerate(items):
            # Position t predicts ids[t + 1]; the memory sees the body from its <sep> (ids[ctx_len - 1]).
            for t in range(ctx_len - 1, len(ids) - 1):
                target = ids[t + 1]
                n, nxt, counts = index.next_counts(ids[ctx_len - 1 : t + 1])
                hit = int(counts[nxt == target].sum()) if n else 0
                match_len.append(n)
                p_model.append(math.exp(logp[b, t, target].item()))
                p_corpus.append(hit / int(counts.sum()) if n else 0.0)
    return {
        "match_len": np.asarray(match_len, dtype=np.int64),
        "p_model": np.asarray(p_model, dtype=np.float64),
        "p_corpus": np.asarray(p_corpus, dtype=np.float64),
    }


def _perplexity(p: np.ndarray) -> float:
    return float(np.exp(-np.log(np.maximum(p, 1e-30)).mean())) if len(p) else float("nan")


def perplexities(positions: dict[str, np.ndarray], weights: list[float]) -> tuple[float, float]:
    """(LM alone, LM mixed with the memory) token perplexity over `held_out_positions` output."""
    w = np.asarray(weights)[np.minimum(positions["match_len"], len(weights) - 1)]
    fused = (1 - w) * positions["p_model"] + w * positions["p_corpus"]
    return _perplexity(positions["p_model"]), _perplexity(fused)


def add_memory(
    ckpt: str | Path,
    model: DecoderLM,
    tok: Tokenizer,
    train: list[Email],
    dev: list[Email],
    cfg: MemoryConfig,
    data_cfg: DataConfig,
    log=print,
) -> dict[str, Any]:
    """Build the memory of `train`, fit its weights on `dev` and write both into checkpoint dir `ckpt`."""
    t0 = time.perf_counter()
    index = build_memory(train, tok, cfg.max_match)
    log(f"memory: {len(index)} tokens of {len(train)} emails indexed in {time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    pos = held_out_positions(model.eval(), tok, index, dev[: cfg.fit_emails], data_cfg)
    weights = fit_match_weights(
        pos["match_len"], pos["p_model"], pos["p_corpus"], cfg.max_match, cfg.min_positions
    )
    ppl_lm, ppl_fused = perplexities(pos, weights)
    meta = {
        "weights": weights,
        "max_match": cfg.max_match,
        "train_emails": len(train),
        "tokens": len(index),
        "fit_emails": min(len(dev), cfg.fit_emails),
        "fit_positions": int(len(pos["match_len"])),
        "dev_perplexity_lm": ppl_lm,
        "dev_perplexity_with_memory": ppl_fused,
    }
    index.save(Path(ckpt) / MEMORY_FILE)
    atomic_write_text(Path(ckpt) / MEMORY_META, json.dumps(meta, indent=2) + "\n")
    log(
        f"memory: weights fitted on {meta['fit_positions']} dev tokens in {time.perf_counter() - t1:.0f} s; "
        f"dev perplexity {meta['dev_perplexity_lm']:.2f} -> {meta['dev_perplexity_with_memory']:.2f}"
    )
    return meta


def load_memory(ckpt: str | Path) -> tuple[InfiniGram, list[float]] | None:
    """The memory of a checkpoint (index, weights), or None when it has none."""
    ckpt = Path(ckpt)
    if not (ckpt / MEMORY_FILE).is_file():
        return None
    try:
        meta = json.loads((ckpt / MEMORY_META).read_text(encoding="utf-8"))
        weights = [float(x) for x in meta["weights"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt / MEMORY_META}: missing or malformed ({e})") from None
    return InfiniGram.load(ckpt / MEMORY_FILE), weights


__all__ = [
    "MEMORY_FILE",
    "MEMORY_META",
    "add_memory",
    "build_memory",
    "held_out_positions",
    "load_memory",
    "memory_docs",
    "perplexities",
]
