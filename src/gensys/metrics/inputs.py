"""Input checks shared by the metrics: one error type, one rule per kind of bad input.

Every metric validates its input here so that bad input gives a one-line `MetricInputError` (a `ValueError`)
naming the problem, never an IndexError or ZeroDivisionError from deep inside a formula.

Text metrics take `hyps: Sequence[str]` (one hypothesis per segment) and `refs: Sequence[Sequence[str]]`
(the references of each segment; segments may have different numbers of references, as caption sets do).
A plain string in place of a segment's reference list means that one reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gensys.errors import GensysError


class MetricInputError(GensysError, ValueError):
    """Bad input to a metric: mismatched lengths, empty reference sets, undecodable text, NaN, ..."""


@dataclass
class Score:
    """A corpus-level result: `score` in the metric's customary scale, optional per-segment scores."""

    name: str
    score: float
    signature: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    segments: list[float] | None = None

    def to_dict(self, per_segment: bool = False) -> dict[str, Any]:
        """JSON-ready dict (sacrebleu's CLI layout: name, score, signature, then details)."""
        out: dict[str, Any] = {"name": self.name, "score": self.score}
        if self.signature:
            out["signature"] = self.signature
        out.update(self.details)
        if per_segment and self.segments is not None:
            out["segments"] = self.segments
        return out


def check_text_pairs(hyps: Sequence[str], refs: Sequence[Sequence[str] | str]) -> list[list[str]]:
    """Validate a hypothesis/reference corpus and return refs as per-segment lists of strings."""
    if isinstance(hyps, str):
        raise MetricInputError("hyps must be a list of strings (one per segment), not a single string")
    if isinstance(refs, str):
        raise MetricInputError("refs must be a list with one reference list per segment, not a single string")
    if len(hyps) != len(refs):
        raise MetricInputError(f"{len(hyps)} hypotheses but {len(refs)} reference sets: counts must match")
    if len(hyps) == 0:
        raise MetricInputError("empty corpus: no segments to score")
    out: list[list[str]] = []
    for i, (h, rs) in enumerate(zip(hyps, refs)):
        if not isinstance(h, str):
            raise MetricInputError(f"hypothesis {i} is {type(h).__name__}, expected str (decode bytes first)")
        seg = [rs] if isinstance(rs, str) else list(rs)
        seg = [r for r in seg if r is not None]
        if not seg:
            raise MetricInputError(f"segment {i} has an empty reference set")
        for r in seg:
            if not isinstance(r, str):
                raise MetricInputError(f"a reference of segment {i} is {type(r).__name__}, expected str")
        out.append(seg)
    return out


def ref_streams(refs: list[list[str]]) -> list[list[str | None]]:
    """Per-segment reference lists -> sacrebleu's reference streams (None where a segment has fewer refs)."""
    n = max(len(r) for r in refs)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(n)]


def check_same_length(a: np.ndarray, b: np.ndarray, what: str = "y_true and y_pred") -> None:
    if a.shape[0] != b.shape[0]:
        raise MetricInputError(f"{what} have different lengths ({a.shape[0]} vs {b.shape[0]})")
