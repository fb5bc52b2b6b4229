"""Ranking / retrieval metrics: Precision@k, Recall@k, MRR, (mean) average precision, nDCG@k.

Two input styles:
- ranked lists (what a retriever returns): `ranked[q]` is the ordered list of item ids for query q and
  `relevant[q]` the set of relevant ids, or a `{id: gain}` mapping for graded relevance (nDCG). These return
  the mean over queries. A query with no relevant item is a `MetricInputError` for recall, MRR, AP and nDCG
  (the metric is undefined for it; drop such queries first).
- score matrices as scikit-learn (`average_precision_score`, `ndcg_score`): `y_true[q, j]` relevance of
  candidate j, `y_score[q, j]` its score. Tied scores are handled as scikit-learn does (AP: one threshold per
  distinct score; nDCG: tied items share the average gain of their group), proven equal in tests.
nDCG uses linear gain (gain = relevance) and the discount 1 / log2(rank + 1), scikit-learn's convention.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from gensys.metrics.inputs import MetricInputError

Relevant = Collection[Hashable] | Mapping[Hashable, float]


def _check(ranked: Sequence[Sequence[Hashable]], relevant: Sequence[Relevant], k: int | None) -> None:
    if len(ranked) != len(relevant):
        raise MetricInputError(f"{len(ranked)} ranked lists but {len(relevant)} relevance sets")
    if len(ranked) == 0:
        raise MetricInputError("no queries to score")
    if k is not None and k < 1:
        raise MetricInputError(f"k must be >= 1, got {k}")


def _nonempty(rel: Relevant, q: int, metric: str) -> None:
    if len(rel) == 0:
        raise MetricInputError(f"{metric}: query {q} has no relevant items (undefined); drop it first")


def precision_at_k(ranked: Sequence[Sequence[Hashable]], relevant: Sequence[Relevant], k: int) -> float:
    """Mean over queries of |top-k ∩ relevant| / k (missing slots of a short list count as misses)."""
    _check(ranked, relevant, k)
    return float(np.mean([sum(d in rel for d in r[:k]) / k for r, rel in zip(ranked, relevant)]))


def recall_at_k(ranked: Sequence[Sequence[Hashable]], relevant: Sequence[Relevant], k: int) -> float:
    """Mean over queries of |top-k ∩ relevant| / |relevant|."""
    _check(ranked, relevant, k)
    out = []
    for q, (r, rel) in enumerate(zip(ranked, relevant)):
        _nonempty(rel, q, "recall@k")
        out.append(sum(d in rel for d in r[:k]) / len(rel))
    return float(np.mean(out))


def mrr(ranked: Sequence[Sequence[Hashable]], relevant: Sequence[Relevant], k: int | None = None) -> float:
    """Mean reciprocal rank of the first relevant item (0 for a query with none in its top k)."""
    _check(ranked, relevant, k)
    out = []
    for q, (r, rel) in enumerate(zip(ranked, relevant)):
        _nonempty(rel, q, "MRR")
        out.append(next((1.0 / (i + 1) for i, d in enumerate(r[:k]) if d in rel), 0.0))
    return float(np.mean(out))


def mean_average_precision(
    ranked: Sequence[Sequence[Hashable]], relevant: Sequence[Relevant], k: int | None = None
) -> float:
    """mAP: mean over queries of sum_{relevant hits at rank i <= k} precision@i / min(|relevant|, k)."""
    _check(ranked, relevant, k)
    out = []
    for q, (r, rel) in enumerate(zip(ranked, relevant)):
        _nonempty(rel, q, "mAP")
        hits, total = 0, 0.0
        for i, d in enumerate(r[:k]):
            if d in rel:
                hits += 1
                total += hits / (i + 1)
        out.append(total / (len(rel) if k is None else min(len(rel), k)))
    return float(np.mean(out))


def ndcg_at_k(
    ranked: Sequence[Sequence[Hashable]], relevant: Sequence[Relevant], k: int | None = None
) -> float:
    """Mean nDCG@k with graded relevance: `relevant[q]` maps id -> gain (a plain set means gain 1)."""
    _check(ranked, relevant, k)
    out = []
    for q, (r, rel) in enumerate(zip(ranked, relevant)):
        _nonempty(rel, q, "nDCG")
        gains = rel if isinstance(rel, Mapping) else dict.fromkeys(rel, 1.0)
        g = np.array([float(gains.get(d, 0.0)) for d in r[:k]])
        ideal = np.sort(np.array([float(v) for v in gains.values()]))[::-1][:k]
        idcg = float(ideal @ (1.0 / np.log2(np.arange(len(ideal)) + 2)))
        dcg = float(g @ (1.0 / np.log2(np.arange(len(g)) + 2)))
        out.append(dcg / idcg if idcg > 0 else 0.0)
    return float(np.mean(out))


def _matrix(y: Any, name: str) -> np.ndarray:
    a = np.asarray(y, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.size == 0:
        raise MetricInputError(f"{name}: expected a non-empty (n_queries, n_candidates) array, got {a.shape}")
    if np.isnan(a).any():
        raise MetricInputError(f"{name}: contains NaN")
    return a


def average_precision_score(y_true: Any, y_score: Any) -> float:
    """Average precision from binary labels and scores (one query, 1-D), as scikit-learn's.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first; items with equal scores
    enter together. No positive label: `MetricInputError` (scikit-learn warns and returns a useless value).
    """
    t = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if t.shape != s.shape or t.size == 0:
        raise MetricInputError(
            f"y_true and y_score must be non-empty and equally long ({t.size} vs {s.size})"
        )
    if not np.isin(t, (0.0, 1.0)).all():
        raise MetricInputError("average_precision_score needs binary 0/1 relevance labels")
    if t.sum() == 0:
        raise MetricInputError("average_precision_score: no positive label (AP undefined)")
    order = np.argsort(-s, kind="mergesort")
    t, s = t[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tp = np.cumsum(t)[last_of_tie]
    n_pred = last_of_tie + 1.0
    prec, rec = tp / n_pred, tp / t.sum()
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


def ndcg_score(y_true: Any, y_score: Any, k: int | None = None) -> float:
    """Mean nDCG over queries from graded relevance `y_true` (n_q, n_c) and scores, as scikit-learn's.

    Tied scores: every item of a tie group gets the group's mean gain, spread over the ranks it occupies.
    A query whose ideal DCG is 0 (no relevant candidate) scores 0, as in scikit-learn.
    """
    t, s = _matrix(y_true, "y_true"), _matrix(y_score, "y_score")
    if t.shape != s.shape:
        raise MetricInputError(f"y_true and y_score shapes differ: {t.shape} vs {s.shape}")
    if k is not None and k < 1:
        raise MetricInputError(f"k must be >= 1, got {k}")
    n_c = t.shape[1]
    discount = 1.0 / np.log2(np.arange(n_c) + 2.0)
    if k is not None:
        discount[k:] = 0.0
    cum_discount = np.cumsum(discount)
    out = []
    for tq, sq in zip(t, s):
        # tie groups in descending score order
        _, inverse, counts = np.unique(-sq, return_inverse=True, return_counts=True)
        mean_gain = np.bincount(inverse, weights=tq) / counts
        group_end = np.cumsum(counts) - 1
        group_discount = np.diff(np.r_[0.0, cum_discount[group_end]])
        dcg = float(mean_gain @ group_discount)
        idcg = float(np.sort(tq)[::-1] @ discount)
        out.append(dcg / idcg if idcg > 0 else 0.0)
    return float(np.mean(out))
