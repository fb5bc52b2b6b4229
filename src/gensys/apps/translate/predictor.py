"""The translate predictor: what `gensys translate predict`, `eval` and the server call.

    tr = load_predictor("models/translate")
    tr.translate(["A dog runs.", ""], beam=5)  # -> [{"translation": "...", "score": -0.31, ...}, ...]

Sentences are sorted by length and decoded in batches (beam search or greedy from `gensys.generate`), then
returned in input order. An empty (or all-blank) input gives an empty translation without touching the model;
an input longer than the model's `max_len` tokens is truncated and flagged (`"truncated": True`) with a
warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gensys.checkpoint import load_checkpoint
from gensys.data.batching import pad_batch
from gensys.data.tokenizer import Tokenizer
from gensys.errors import CheckpointError, DataError
from gensys.generate import GenerationConfig, generate


@dataclass
class Decoded:
    """One decoded sentence: tokens (no <eos>) and its score (beam: length-penalised log-prob per token^lp;
    greedy: mean log-prob per token)."""

    tokens: list[int]
    score: float


def decode_ids(
    model: nn.Module,
    tokenizer: Tokenizer,
    sources: Sequence[Sequence[int]],
    *,
    beam: int = 5,
    length_penalty: float = 1.0,
    max_len: int = 128,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    batch_size: int = 64,
) -> list[Decoded]:
    """Translate token-id sources (each ending with <eos>) in length-sorted batches; results in input order.

    beam > 1 runs beam search (n-best of size 1), beam == 1 greedy search. Each batch may generate up to
    `min(max_len, max_len_a * longest source + max_len_b)` tokens.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    eos, pad, bos = tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id
    device = next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    out: list[Decoded | None] = [None] * len(sources)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        src_ids, src_mask = pad_batch([list(sources[i]) for i in idx], pad)  # (B, S) right-padded
        src_ids, src_mask = src_ids.to(device), src_mask.to(device)
        longest = int(src_mask.sum(dim=1).max())
        max_new = max(1, min(max_len, int(max_len_a * longest + max_len_b)))
        knobs: dict[str, Any] = {"strategy": "greedy"}
        if beam > 1:
            knobs = {"strategy": "beam", "num_beams": beam, "length_penalty": length_penalty}
        cfg = GenerationConfig(
            max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad, decoder_start_token_id=bos, **knobs
        )
        start_ids = torch.full((len(idx), 1), bos, dtype=torch.long, device=device)  # (B, 1) decoder prompt
        res = generate(model, start_ids, None, cfg, encoder_inputs=(src_ids, src_mask), memory_mask=src_mask)
        for row, i in enumerate(idx):
            hyp = res.nbest[row][0]
            toks = [t for t in hyp.tokens if t != eos]
            score = hyp.score if beam > 1 else hyp.logprob / max(1, len(hyp.tokens))
            out[i] = Decoded(toks, float(score))
    return [d for d in out if d is not None]


class Translator:
    """A loaded translation model with its tokenizer and decoding defaults (from the checkpoint)."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, config: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        info = config.get("translate") or {}
        self.src_lang: str = info.get("src_lang", "")
        self.tgt_lang: str = info.get("tgt_lang", "")
        self.max_len: int = int(info.get("max_len", 128))
        dec = info.get("decode") or {}
        self.length_penalty: float = float(dec.get("length_penalty", 1.0))
        self.max_len_a: float = float(dec.get("max_len_a", 1.5))
        self.max_len_b: int = int(dec.get("max_len_b", 10))
        self.batch_size: int = int(dec.get("batch_size", 64))
        self.default_beam: int = int(dec.get("beam", 5))

    def encode(self, text: str) -> tuple[list[int], bool]:
        """Source ids (ending with <eos>) of one sentence and whether it had to be truncated."""
        ids = self.tokenizer.encode(text)
        truncated = len(ids) > self.max_len - 1
        return ids[: self.max_len - 1] + [self.tokenizer.eos_id], truncated

    @torch.inference_mode()
    def translate(
        self,
        texts: Sequence[str],
        *,
        beam: int = 5,
        length_penalty: float | None = None,
        batch_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """Translate each text; returns `[{"translation", "score", "truncated"}]` in input order.

        `score` is the length-normalised log-probability of the translation (higher is better; 0.0 for an
        empty input). Line breaks inside a text are treated as spaces.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise DataError("translate() expects a list of strings")
        results: list[dict[str, Any]] = [{"translation": "", "score": 0.0, "truncated": False} for _ in texts]
        todo, sources = [], []
        for i, text in enumerate(texts):
            text = " ".join(text.split())
            if not text:
                continue
            ids, truncated = self.encode(text)
            if truncated:
                warnings.warn(
                    f"input {i} is longer than {self.max_len - 1} tokens; translating its first "
                    f"{self.max_len - 1} tokens only",
                    stacklevel=2,
                )
            results[i]["truncated"] = truncated
            todo.append(i)
            sources.append(ids)
        if sources:
            decoded = decode_ids(
                self.model,
                self.tokenizer,
                sources,
                beam=beam,
                length_penalty=self.length_penalty if length_penalty is None else length_penalty,
                max_len=self.max_len,
                max_len_a=self.max_len_a,
                max_len_b=self.max_len_b,
                batch_size=batch_size or self.batch_size,
            )
            for i, d in zip(todo, decoded):
                results[i]["translation"] = self.tokenizer.decode(d.tokens).strip()
                results[i]["score"] = d.score
        return results


def load_predictor(ckpt_dir: str | os.PathLike, device: str = "cpu", **_: Any) -> Translator:
    """Load a translate checkpoint (e.g. `models/translate` or `runs/translate/demo/best`)."""
    model, config, tokenizer = load_checkpoint(ckpt_dir, map_location=device)
    if config.get("family") != "seq2seq":
        raise CheckpointError(f"{ckpt_dir} holds a {config.get('family')!r} model, not a seq2seq translator")
    if tokenizer is None:
        raise CheckpointError(f"{ckpt_dir} has no tokenizer.json")
    assert isinstance(model, nn.Module)
    return Translator(model, tokenizer, config)


__all__ = ["Decoded", "Translator", "decode_ids", "load_predictor"]
