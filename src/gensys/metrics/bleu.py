"""BLEU and chrF.

- `bleu`, `chrf`: corpus scores computed by sacrebleu, the field's reference implementation, so numbers
  and signatures are exactly sacrebleu's (tokeniser 13a by default, exp smoothing, 0-100 scale). We add
  input checks and the per-segment reference layout used across gensys.metrics.
- `coco_bleu`: BLEU-1..4 as the COCO caption evaluation (pycocoevalcap) computes it, 0-1 scale: whitespace
  tokens (tokenise first, e.g. with `gensys.metrics.cider.coco_tokenize`), the reference length closest
  to each hypothesis (ties to the shorter), corpus n-gram totals with its 1e-15 / 1e-9 guards. Own code,
  proven equal to pycocoevalcap in tests/metrics/test_metrics_bleu.py.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import sacrebleu

from gensys.metrics.inputs import Score, check_text_pairs, ref_streams


def bleu(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str] | str],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
    smooth_method: str = "exp",
) -> Score:
    """Corpus BLEU (sacrebleu). `refs[i]` lists the references of segment i (counts may differ)."""
    seg_refs = check_text_pairs(hyps, refs)
    metric = sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method)
    r = metric.corpus_score(list(hyps), ref_streams(seg_refs))
    details = {
        "verbose_score": r._verbose,
        "precisions": [float(p) for p in r.precisions],
        "bp": float(r.bp),
        "ratio": float(r.ratio),
        "hyp_len": int(r.sys_len),
        "ref_len": int(r.ref_len),
    }
    return Score("BLEU", float(r.score), str(metric.get_signature()), details)


def chrf(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str] | str],
    *,
    char_order: int = 6,
    word_order: int = 0,
    beta: int = 2,
    lowercase: bool = False,
) -> Score:
    """Corpus chrF (word_order=2 gives chrF++), computed by sacrebleu."""
    seg_refs = check_text_pairs(hyps, refs)
    metric = sacrebleu.CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase)
    r = metric.corpus_score(list(hyps), ref_streams(seg_refs))
    return Score(r.name, float(r.score), str(metric.get_signature()))


def _ngram_counts(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def coco_bleu(hyps: Sequence[str], refs: Sequence[Sequence[str] | str], n: int = 4) -> Score:
    """COCO-caption BLEU-1..n on whitespace tokens: `score` is BLEU-n, `details` has all orders (0-1 scale).

    `segments` holds each segment's BLEU-n (with its own brevity penalty), as pycocoevalcap reports them.
    An empty hypothesis scores 0 (its n-gram count is 0).
    """
    seg_refs = check_text_pairs(hyps, refs)
    tiny, small = 1e-15, 1e-9  # pycocoevalcap's guards: 0 matches of 0 guesses gives ~0, never 0/0
    correct, guess = [0] * n, [0] * n
    hyp_total, ref_total = 0, 0
    per_segment: list[float] = []
    for hyp, rs in zip(hyps, seg_refs):
        words = hyp.split()
        max_ref: dict[tuple[str, ...], int] = {}
        ref_lens = []
        for r in rs:
            rw = r.split()
            ref_lens.append(len(rw))
            for g, c in _ngram_counts(rw, n).items():
                if c > max_ref.get(g, 0):
                    max_ref[g] = c
        ref_len = min((abs(rl - len(words)), rl) for rl in ref_lens)[1]  # closest; ties -> shorter
        seg_correct = [0] * n
        for g, c in _ngram_counts(words, n).items():
            seg_correct[len(g) - 1] += min(max_ref.get(g, 0), c)
        seg_guess = [max(0, len(words) - k) for k in range(n)]
        hyp_total += len(words)
        ref_total += ref_len
        for k in range(n):
            correct[k] += seg_correct[k]
            guess[k] += seg_guess[k]
        per_segment.append(_bleu_from_counts(seg_correct, seg_guess, len(words), ref_len, tiny, small)[-1])
    scores = _bleu_from_counts(correct, guess, hyp_total, ref_total, tiny, small)
    details = {f"bleu_{k + 1}": scores[k] for k in range(n)}
    details.update(hyp_len=hyp_total, ref_len=ref_total)
    return Score(f"BLEU-{n} (coco)", scores[-1], "", details, per_segment)


def _bleu_from_counts(
    correct: list[int], guess: list[int], hyp_len: int, ref_len: int, tiny: float, small: float
) -> list[float]:
    """BLEU-1..n: geometric means of clipped n-gram precisions times the brevity penalty."""
    out, prod = [], 1.0
    for k in range(len(correct)):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        out.append(prod ** (1.0 / (k + 1)))
    ratio = (hyp_len + tiny) / (ref_len + small)
    if ratio < 1:
        bp = math.exp(1 - 1 / ratio)
        out = [s * bp for s in out]
    return out
