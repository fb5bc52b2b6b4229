"""ExactMatch@N for phrase completion (Smart Compose).

A suggestion of N words counts when all N words equal the next N words the user actually wrote. Per segment:
the first N whitespace tokens of the suggestion against the first N of the continuation; a suggestion or a
continuation shorter than N words is a miss (it cannot be an N-word match). `details["coverage"]` is the share
of segments whose suggestion has at least N words, so a model that stays silent is visible.
"""

from __future__ import annotations

from collections.abc import Sequence

from gensys.metrics.inputs import MetricInputError, Score, check_text_pairs


def exact_match_at_n(
    suggestions: Sequence[str], continuations: Sequence[str], n: int, *, lowercase: bool = False
) -> Score:
    """Fraction of segments whose suggestion's first `n` words equal the continuation's first `n` words."""
    if n < 1:
        raise MetricInputError(f"N must be >= 1, got {n}")
    if isinstance(continuations, str):
        raise MetricInputError("continuations must be a list of strings (one per segment)")
    seg_refs = check_text_pairs(suggestions, [[c] for c in continuations])
    hits, covered, seg = 0, 0, []
    for s, (c, *_) in zip(suggestions, seg_refs):
        sw = (s.lower() if lowercase else s).split()
        cw = (c.lower() if lowercase else c).split()
        ok = len(sw) >= n and len(cw) >= n and sw[:n] == cw[:n]
        covered += len(sw) >= n
        hits += ok
        seg.append(float(ok))
    total = len(seg)
    return Score(
        f"ExactMatch@{n}",
        hits / total,
        f"exact-match|n:{n}|lc:{'yes' if lowercase else 'no'}",
        {"coverage": covered / total, "matches": hits, "segments": total},
        seg,
    )
