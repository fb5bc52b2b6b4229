"""CIDEr and CIDEr-D, vectorised over the whole corpus with numpy.

Conventions are coco-caption's (pycocoevalcap `Cider`, which is CIDEr-D, and Vedantam's original CIDEr code),
proven equal in tests/metrics/test_metrics_cider.py:
- tokens: whitespace split of already-tokenised text (coco-caption runs its PTB tokeniser first: use
  `coco_tokenize`); n-grams of order 1..4;
- document frequency df(g): the number of *segments (images)* whose reference set contains g, computed
  from the references of the corpus being scored; idf = log(#segments) - log(max(1, df));
- TF-IDF vectors per order; similarity with each reference: cosine (CIDEr) or, for CIDEr-D, the hypothesis
  weights clipped to the reference's (min(h, r) * r) times a Gaussian length penalty exp(-(l_h - l_r)^2 / 72)
  (sigma = 6), where coco-caption's l is the number of bigrams (the token count minus one);
- segment score = 10 * mean over orders of the mean over references; corpus score = mean over segments.
Because df comes from the scored corpus, scores depend on the whole set: score a test set in one call.

Speed: every sentence's n-grams become integer ids in one pass; tf, df, norms and the clipped dot products are
numpy bincount / searchsorted over flat arrays instead of per-n-gram Python dictionaries.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from gensys.metrics.inputs import Score, check_text_pairs


def _unique_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index of a first occurrence of each distinct value (sorted by value), each element's value index, and
    counts. One argsort; np.unique's hash path is several times slower on these arrays."""
    order = np.argsort(a)
    s = a[order]
    first = np.empty(s.size, dtype=bool)
    first[:1] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    inverse = np.empty(a.size, dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    return order[starts], inverse, np.diff(np.r_[starts, s.size])


def _distinct(a: np.ndarray) -> np.ndarray:
    s = np.sort(a)
    return s[np.r_[True, s[1:] != s[:-1]]] if s.size else s


def _ngram_ids(sentences: list[list[str]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All n-gram occurrences of orders 1..n as (sentence index, global n-gram id) plus each id's order."""
    tokens = [w for s in sentences for w in s]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(tokens))}
    ids = np.fromiter(map(vocab.__getitem__, tokens), dtype=np.int64, count=len(tokens))  # (T,)
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    sent_of = np.repeat(np.arange(len(sentences)), lengths)  # (T,)
    end_of = np.repeat(np.cumsum(lengths), lengths)  # (T,) one past the last token of the sentence
    pos = np.arange(ids.size)
    sents, gids, orders = [], [], []
    prev = ids  # id of the (k-1)-gram starting at each position
    n_ids = len(vocab)
    offset = 0
    for k in range(1, n + 1):
        valid = pos + k <= end_of
        if k > 1:
            nxt = np.zeros_like(ids)
            nxt[: ids.size - k + 1] = ids[k - 1 :]
            key = np.where(valid, prev * max(len(vocab), 1) + nxt, -1)  # < T * V: fits in int64
            _, prev, _ = _unique_inverse(key)
            n_ids = int(prev.max()) + 1 if prev.size else 0
        sents.append(sent_of[valid])
        gids.append(prev[valid] + offset)
        orders.append(np.full(n_ids, k - 1, dtype=np.int64))
        offset += n_ids
    return np.concatenate(sents), np.concatenate(gids), np.concatenate(orders), lengths


def _cider(
    hyps: Sequence[str], refs: Sequence[Sequence[str] | str], n: int, sigma: float, clipped: bool
) -> tuple[float, list[float]]:
    seg_refs = check_text_pairs(hyps, refs)
    n_seg = len(seg_refs)
    sentences = [h.split() for h in hyps] + [r.split() for rs in seg_refs for r in rs]
    n_refs = np.array([len(rs) for rs in seg_refs])
    seg_of = np.r_[np.arange(n_seg), np.repeat(np.arange(n_seg), n_refs)]  # segment of every sentence
    sent, gid, order_of, lengths = _ngram_ids(sentences, n)
    n_g = order_of.size

    # term frequencies: unique (sentence, n-gram) pairs with their counts
    first, _, tf = _unique_inverse(sent * n_g + gid)
    p_sent, p_gid = sent[first], gid[first]  # sorted by sentence, then n-gram
    is_ref = p_sent >= n_seg
    # document frequency: in how many segments' reference sets does each n-gram occur
    seg_gid = _distinct(seg_of[p_sent[is_ref]] * n_g + p_gid[is_ref])
    df = np.bincount(seg_gid % n_g, minlength=n_g).astype(np.float64)
    w = tf * (np.log(float(n_seg)) - np.log(np.maximum(1.0, df[p_gid])))  # tf-idf weight of each pair
    p_order = order_of[p_gid]
    norm = np.sqrt(np.bincount(p_sent * n + p_order, weights=w * w, minlength=len(sentences) * n))
    norm = norm.reshape(len(sentences), n)  # (S, n)

    # hypothesis weight of each reference n-gram (0 where the hypothesis lacks it)
    h_key = seg_of[p_sent[~is_ref]] * n_g + p_gid[~is_ref]  # sorted, since pairs are sorted by sentence
    h_w = w[~is_ref]
    r_key = seg_of[p_sent[is_ref]] * n_g + p_gid[is_ref]
    at = np.minimum(np.searchsorted(h_key, r_key), max(h_key.size - 1, 0))
    found = h_key[at] == r_key if h_key.size else np.zeros(r_key.size, dtype=bool)
    wh = np.where(found, h_w[at] if h_w.size else 0.0, 0.0)
    wr = w[is_ref]
    prod = (np.minimum(wh, wr) if clipped else wh) * wr
    r_sent = p_sent[is_ref] - n_seg  # reference index 0..R-1
    n_ref_total = len(sentences) - n_seg
    dot = np.bincount(r_sent * n + p_order[is_ref], weights=prod, minlength=n_ref_total * n).reshape(-1, n)

    ref_seg = seg_of[n_seg:]
    nh, nr = norm[:n_seg][ref_seg], norm[n_seg:]  # (R, n) each
    denom = nh * nr
    val = np.where(denom != 0, dot / np.where(denom != 0, denom, 1.0), dot)
    if sigma > 0:
        bigrams = np.maximum(lengths - 1, 0) if n >= 2 else np.zeros_like(lengths)  # coco's "length"
        delta = (bigrams[:n_seg][ref_seg] - bigrams[n_seg:]).astype(np.float64)
        val = val * np.exp(-(delta**2) / (2 * sigma**2))[:, None]
    per_seg = np.stack([np.bincount(ref_seg, weights=val[:, k], minlength=n_seg) for k in range(n)], axis=1)
    scores = per_seg.mean(axis=1) / n_refs * 10.0
    return float(scores.mean()), scores.tolist()


def cider_d(
    hyps: Sequence[str], refs: Sequence[Sequence[str] | str], n: int = 4, sigma: float = 6.0
) -> Score:
    """CIDEr-D (coco-caption's reported "CIDEr"): clipped TF-IDF cosine with a Gaussian length penalty."""
    score, seg = _cider(hyps, refs, n, sigma, clipped=True)
    return Score("CIDEr-D", score, f"cider-d|n:{n}|sigma:{sigma}|df:corpus", {}, seg)


def cider(hyps: Sequence[str], refs: Sequence[Sequence[str] | str], n: int = 4) -> Score:
    """CIDEr (Vedantam et al. 2015): plain TF-IDF cosine, no clipping, no length penalty."""
    score, seg = _cider(hyps, refs, n, 0.0, clipped=False)
    return Score("CIDEr", score, f"cider|n:{n}|df:corpus", {}, seg)


# Penn-Treebank-style tokenisation as coco-caption's Stanford PTBTokenizer 3.4.1 (-lowerCase -preserveLines)
# followed by its removal of punctuation tokens. Tokens are found on the original casing (the Java lexer's
# rules are case-sensitive: "A&M" stays whole, "at&t" splits) and lower-cased afterwards.
_ABBREV = (
    "Mr|Mrs|Ms|Dr|Jr|Sr|St|Dept|Prof|Gen|Rep|Sen|Gov|Capt|Lt|Col|Sgt|Co|Corp|Inc|Ltd|Bros|Mt|Ft|Ave|Blvd|Rd|"
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|vs|etc|No"
)
_PTB_TOKEN = re.compile(
    rf"""
    [A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:com|org|net|edu|gov)\b   # domain names stay whole
    | (?:[A-Za-z]\.){{2,}}                        # acronyms: N.Y.  U.S.
    | (?:{_ABBREV})\.(?![A-Za-z])                 # known abbreviations keep their period
    | \b[A-Z]\.(?=\s|$|["'])                     # an initial: U. Miami, John A. Noble
    | \d+(?:[.,:]\d+)+                           # numbers: 1,000  2.52  10:30
    | [A-Za-z]+(?=n't\b) | n't\b                  # don't -> do n't
    | '(?:[sSmMdD]|ll|LL|re|RE|ve|VE)\b | 'n' | 'em\b   # clitics
    | [A-Z]+&[A-Z]+                                # A&M, Q&A
    | [A-Za-z0-9]+(?:[-/][A-Za-z0-9]+)*(?:'[A-Za-z]+(?<!'s)(?<!'d)(?<!'m)(?<!'ll)(?<!'re)(?<!'ve))*
    | \.\.\. | -- | \S
    """,
    re.VERBOSE,
)
_PTB_MAP = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
# coco-caption drops these tokens (its list is upper-case "-LRB-", so lower-cased brackets survive)
_PTB_DROP = {"''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def coco_tokenize(text: str) -> str:
    """Tokenise as coco-caption does before BLEU/CIDEr/ROUGE: PTB rules, lower case, punctuation dropped.

    A regex re-implementation of the Java tokeniser (which gensys cannot require at run time). On the 66k
    English captions of Flickr8k and Multi30k it gives the same tokens on all but a handful of lines (odd
    abbreviations); tests/metrics/test_metrics_cider.py measures the agreement against the Java original.
    """
    text = re.sub(r"\bcannot\b", "can not", text.replace("&amp;", "&"), flags=re.IGNORECASE)
    out = []
    for tok in _PTB_TOKEN.findall(text):
        tok = _PTB_MAP.get(tok, tok.lower())
        if tok not in _PTB_DROP:
            out.append(tok)
    return " ".join(out)
