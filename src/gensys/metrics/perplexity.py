"""Perplexity: exp(total token NLL / token count) -- the one place token-weighted NLL is aggregated.

Always sum NLL over tokens and count tokens, then divide once. Averaging per-batch (or per-sentence) mean
losses weights a short batch like a long one and gives a different, wrong number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gensys.metrics.inputs import MetricInputError


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total_nll / n_tokens): `total_nll` is the summed natural-log NLL of `n_tokens` scored tokens."""
    if n_tokens <= 0:
        raise MetricInputError(f"perplexity needs at least one token, got n_tokens={n_tokens}")
    if not math.isfinite(total_nll) or total_nll < 0:
        raise MetricInputError(f"total_nll must be a finite non-negative sum, got {total_nll}")
    return math.exp(total_nll / n_tokens)


@dataclass
class PerplexityAccumulator:
    """Streaming perplexity: add summed NLL and token counts batch by batch, read `value` at the end."""

    total_nll: float = 0.0
    n_tokens: int = 0

    def add(self, nll_sum: float, n_tokens: int) -> None:
        """Add a batch's summed NLL (not its mean) and the number of tokens it covers."""
        if n_tokens < 0:
            raise MetricInputError(f"n_tokens must be >= 0, got {n_tokens}")
        self.total_nll += float(nll_sum)
        self.n_tokens += int(n_tokens)

    def add_logits(self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> None:
        """Add a batch from logits (B, T, V) and targets (B, T); `ignore_index` positions are skipped."""
        if logits.shape[:-1] != targets.shape:
            raise MetricInputError(
                f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}"
            )
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=ignore_index,
            reduction="sum",
        )  # summed over real tokens, never a mean
        self.add(float(nll), int((targets != ignore_index).sum()))

    @property
    def value(self) -> float:
        """Perplexity of everything added so far."""
        return perplexity(self.total_nll, self.n_tokens)

    @property
    def mean_nll(self) -> float:
        """Token-weighted mean NLL (nats per token)."""
        if self.n_tokens <= 0:
            raise MetricInputError("no tokens added")
        return self.total_nll / self.n_tokens
