"""ROUGE-1/2/L/Lsum as Google's rouge-score computes them, and COCO's ROUGE-L.

`rouge`: rouge-score's definition (proven equal in tests/metrics/test_metrics_rouge.py): lower-case, every run
of characters outside [a-z0-9] is a separator, optional Porter stemming of tokens longer than 3 characters;
ROUGE-N from clipped n-gram overlap, ROUGE-L from the longest common subsequence, ROUGE-Lsum from the union
LCS of newline-separated sentences. Several references: per type, the reference with the best F1 (first on
ties). Corpus score: the mean over segments (rouge-score's BootstrapAggregator reports the same mean as `mid`,
plus resampled intervals we do not compute). 0-1 scale.

`coco_rouge_l`: pycocoevalcap's ROUGE-L for captions: tokens split on single spaces, best precision and best
recall taken over references separately, F with beta = 1.2.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from gensys.metrics.inputs import MetricInputError, Score, check_text_pairs
from gensys.metrics.stem import porter_stem

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str, use_stemmer: bool = False) -> list[str]:
    """rouge-score's tokeniser: lower-case, split on non-[a-z0-9], stem words longer than 3 chars."""
    toks = _NON_ALNUM.sub(" ", text.lower()).split()
    return [porter_stem(t) if len(t) > 3 else t for t in toks] if use_stemmer else toks


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-int operations."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full  # bit i set = "row i not yet used" in the DP column differences
    for y in b:
        u = v & masks.get(y, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _lcs_indices(ref: list[str], can: list[str]) -> list[int]:
    """Indices into `ref` of one LCS, chosen by rouge-score's backtracking rule (ties move up in `ref`)."""
    rows, cols = len(ref), len(can)
    t = np.zeros((rows + 1, cols + 1), dtype=np.int32)
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            t[i, j] = t[i - 1, j - 1] + 1 if ref[i - 1] == can[j - 1] else max(t[i - 1, j], t[i, j - 1])
    out: list[int] = []
    i, j = rows, cols
    while i > 0 and j > 0:
        if ref[i - 1] == can[j - 1]:
            out.append(i - 1)
            i, j = i - 1, j - 1
        elif t[i, j - 1] > t[i - 1, j]:
            j -= 1
        else:
            i -= 1
    return out[::-1]


def _prf(hits: int, n_pred: int, n_ref: int) -> tuple[float, float, float]:
    p = hits / n_pred if n_pred else 0.0
    r = hits / n_ref if n_ref else 0.0
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def _rouge_n(ref: list[str], hyp: list[str], n: int) -> tuple[float, float, float]:
    rc = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
    hc = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
    hits = sum(min(c, hc[g]) for g, c in rc.items())
    return _prf(hits, max(sum(hc.values()), 1), max(sum(rc.values()), 1))


def _rouge_l(ref: list[str], hyp: list[str]) -> tuple[float, float, float]:
    if not ref or not hyp:
        return 0.0, 0.0, 0.0
    return _prf(lcs_length(ref, hyp), len(hyp), len(ref))


def _rouge_lsum(ref_text: str, hyp_text: str, use_stemmer: bool) -> tuple[float, float, float]:
    refs = [rouge_tokenize(s, use_stemmer) for s in ref_text.split("\n") if s]
    hyps = [rouge_tokenize(s, use_stemmer) for s in hyp_text.split("\n") if s]
    m, n = sum(map(len, refs)), sum(map(len, hyps))
    if not refs or not hyps or not m or not n:
        return 0.0, 0.0, 0.0
    left_r = Counter(t for s in refs for t in s)
    left_h = Counter(t for s in hyps for t in s)
    hits = 0
    for r in refs:
        union = sorted(set().union(*(_lcs_indices(r, h) for h in hyps)))
        for t in (r[i] for i in union):
            # count each token at most as often as it occurs on both sides (ROUGE 1.5.5's rule)
            if left_h[t] > 0 and left_r[t] > 0:
                hits += 1
                left_h[t] -= 1
                left_r[t] -= 1
    return _prf(hits, n, m)


def rouge(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str] | str],
    *,
    types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = False,
) -> dict[str, Score]:
    """Mean ROUGE per type: `score` = F1, `details` = precision and recall, `segments` = per-segment F1."""
    seg_refs = check_text_pairs(hyps, refs)
    for t in types:
        if t not in ("rougeL", "rougeLsum") and not re.fullmatch(r"rouge[1-9]", t):
            raise MetricInputError(f"unknown ROUGE type {t!r}: use rouge1..rouge9, rougeL or rougeLsum")
    per_type: dict[str, list[tuple[float, float, float]]] = {t: [] for t in types}
    for hyp, rs in zip(hyps, seg_refs):
        h_tok = rouge_tokenize(hyp, use_stemmer)
        r_toks = [rouge_tokenize(r, use_stemmer) for r in rs]
        for t in types:
            if t == "rougeL":
                cand = [_rouge_l(r, h_tok) for r in r_toks]
            elif t == "rougeLsum":
                cand = [_rouge_lsum(r, hyp, use_stemmer) for r in rs]
            else:
                cand = [_rouge_n(r, h_tok, int(t[5:])) for r in r_toks]
            per_type[t].append(max(cand, key=lambda s: s[2]))  # max() keeps the first of equal F1
    out = {}
    for t, rows in per_type.items():
        a = np.array(rows)  # (N, 3): precision, recall, F1
        out[t] = Score(
            t,
            float(a[:, 2].mean()),
            f"rouge-score|stem:{'yes' if use_stemmer else 'no'}",
            {"precision": float(a[:, 0].mean()), "recall": float(a[:, 1].mean())},
            a[:, 2].tolist(),
        )
    return out


def coco_rouge_l(hyps: Sequence[str], refs: Sequence[Sequence[str] | str], beta: float = 1.2) -> Score:
    """pycocoevalcap's ROUGE-L (0-1): F_beta of the best LCS precision and best LCS recall over references."""
    seg_refs = check_text_pairs(hyps, refs)
    seg = []
    for hyp, rs in zip(hyps, seg_refs):
        c = hyp.split(" ")
        prec, rec = [], []
        for r in rs:
            rt = r.split(" ")
            lcs = lcs_length(rt, c)
            prec.append(lcs / len(c))
            rec.append(lcs / len(rt))
        p, r_ = max(prec), max(rec)
        seg.append((1 + beta**2) * p * r_ / (r_ + beta**2 * p) if p != 0 and r_ != 0 else 0.0)
    return Score("ROUGE-L (coco)", float(np.mean(seg)), "", {}, seg)
