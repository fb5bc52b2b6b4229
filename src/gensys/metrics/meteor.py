"""METEOR, nltk's definition (`nltk.translate.meteor_score`), not the METEOR 1.5 jar of coco-caption.

Definition implemented (and proven equal to nltk 3.10 in tests/metrics/test_metrics_meteor.py):
- tokens: whitespace split, lower-cased (tokenise punctuation first if it should count as words);
- alignment in three stages, each on the words still unmatched: exact match, Porter-stem match
  (`gensys.metrics.stem`), WordNet-synonym match (`gensys.metrics.wordnet`; WordNet 3.0 files from
  Debian's `wordnet-base`, never downloaded). As in nltk, the synonym stage looks up the *stems* left over
  from the stem stage ("breaking" -> "break" ~ "wear" <- "wearing"). Within a stage, hypothesis words are
  taken from last to first and each takes the last still-free matching reference position;
- P = m / |hyp|, R = m / |ref|, Fmean = P R / (alpha P + (1 - alpha) R), chunks = runs of matches adjacent in
  both sentences, penalty = gamma (chunks / m)^beta, score = (1 - penalty) Fmean; 0 when nothing matches;
- several references: the best single-reference score. Corpus score: mean of segment scores.

METEOR 1.5 (coco-caption's number) differs: paraphrase tables, function-word weights, tuned parameters and a
corpus-level aggregate. Scores of the two are not comparable; report which one you used.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from gensys.metrics.inputs import Score, check_text_pairs
from gensys.metrics.stem import porter_stem
from gensys.metrics.wordnet import WordNet, load_wordnet

Enum = list[tuple[int, str]]  # (original position, word)


def _match_stage(
    hyp: Enum, ref: Enum, candidates: Callable[[str], frozenset[str] | set[str]] | None = None
) -> tuple[list[tuple[int, int]], Enum, Enum]:
    """Match hyp words to ref words; `candidates(word)`: ref words a hyp word may match (default: itself)."""
    positions: dict[str, list[int]] = defaultdict(list)
    for j, (_, w) in enumerate(ref):
        positions[w].append(j)
    matches: list[tuple[int, int]] = []
    used_h, used_r = set(), set()
    for i in range(len(hyp) - 1, -1, -1):
        w = hyp[i][1]
        if candidates is None:
            best = w if positions.get(w) else None
        else:
            best, best_j = None, -1
            for c in candidates(w) | {w}:
                p = positions.get(c)
                if p and p[-1] > best_j:
                    best, best_j = c, p[-1]
        if best is not None:
            j = positions[best].pop()
            used_h.add(i)
            used_r.add(j)
            matches.append((hyp[i][0], ref[j][0]))
    rest_h = [x for i, x in enumerate(hyp) if i not in used_h]
    rest_r = [x for j, x in enumerate(ref) if j not in used_r]
    return matches, rest_h, rest_r


def align(hyp: list[str], ref: list[str], wordnet: WordNet | None) -> list[tuple[int, int]]:
    """Matched (hyp position, ref position) pairs, sorted by hyp position. Words must be lower-cased."""
    h: Enum = list(enumerate(hyp))
    r: Enum = list(enumerate(ref))
    exact, h, r = _match_stage(h, r)
    # as in nltk, the words left after the stem stage stay stemmed, so synonyms are looked up for stems
    stem_m, h, r = _match_stage([(i, porter_stem(w)) for i, w in h], [(j, porter_stem(w)) for j, w in r])
    syn: list[tuple[int, int]] = []
    if wordnet is not None:
        syn, _, _ = _match_stage(h, r, lambda w: {n for n in wordnet.synonyms(w) if "_" not in n})
    return sorted(exact + stem_m + syn)


def _chunks(matches: list[tuple[int, int]]) -> int:
    return 1 + sum(1 for (a, b), (c, d) in zip(matches, matches[1:]) if not (c == a + 1 and d == b + 1))


def single_meteor(
    hyp: list[str],
    ref: list[str],
    wordnet: WordNet | None,
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
) -> float:
    """METEOR of one tokenised hypothesis against one tokenised reference (lower-cased here)."""
    hyp = [w.lower() for w in hyp]
    ref = [w.lower() for w in ref]
    matches = align(hyp, ref, wordnet)
    m = len(matches)
    if m == 0 or not hyp or not ref:
        return 0.0
    precision = m / len(hyp)
    recall = m / len(ref)
    fmean = (precision * recall) / (alpha * precision + (1 - alpha) * recall)
    penalty = gamma * (_chunks(matches) / m) ** beta
    return (1 - penalty) * fmean


def meteor(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str] | str],
    *,
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
    synonyms: bool = True,
    wordnet_dir: str | None = None,
) -> Score:
    """Mean METEOR (nltk definition, 0-1) over segments; `synonyms=False` skips the WordNet stage."""
    seg_refs = check_text_pairs(hyps, refs)
    wn = load_wordnet(wordnet_dir) if synonyms else None
    seg = [
        max(single_meteor(h.split(), r.split(), wn, alpha, beta, gamma) for r in rs)
        for h, rs in zip(hyps, seg_refs)
    ]
    sig = f"meteor:nltk|alpha:{alpha}|beta:{beta}|gamma:{gamma}|stages:exact+stem" + (
        "+wordnet" if wn else ""
    )
    return Score("METEOR", sum(seg) / len(seg), sig, {}, seg)
