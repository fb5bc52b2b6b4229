"""An ∞-gram LM: exact next-token counts after the longest suffix of a context seen in a token corpus.

Where an n-gram LM fixes n, this one uses, for each context, the longest suffix that occurs in the corpus
(Liu et al., 2024, "Infini-gram"); the counts of the tokens that followed it give a sparse distribution.
Interpolated with a neural LM (`gensys.generate.processors.CorpusFusion`) it lets a small transformer
reproduce text it saw once in training, which its weights alone do not memorise.

The lookup is a suffix array over the *reversed* token stream: a context read backwards (newest token first)
is a prefix of suffixes of the reversed stream, so lengthening the context narrows one sorted interval of
the array, and the token that followed each match in the original stream is the one just before it in the
reversed stream. Suffixes are sorted by their first `max_match` tokens only (longer matches are cut there).

Documents are concatenated as given; callers frame them (e.g. `<sep> body <eos>`) so that a match cannot run
from one document into the previous one.
"""

from __future__ import annotations

import array
import bisect
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from gensys.data.atomic import atomic_write
from gensys.errors import CheckpointError


def _sorted_suffixes(rev: np.ndarray, depth: int) -> np.ndarray:
    """Start positions of the suffixes of `rev`, sorted by their first `depth` tokens (prefix doubling).

    After the round with offset k, `rank[i]` orders suffixes by their first 2k tokens; a suffix shorter than
    that sorts before every suffix that continues (the missing token counts as -1).
    """
    n = len(rev)
    rank = rev.astype(np.int64)
    k = 1
    order = np.argsort(rank, kind="stable")
    while k < depth:
        nxt = np.full(n, -1, dtype=np.int64)
        nxt[: n - k] = rank[k:]
        order = np.lexsort((nxt, rank))  # by rank, then by the rank k tokens later
        a, b = rank[order], nxt[order]
        new_group = np.empty(n, dtype=bool)
        new_group[0] = True
        new_group[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        new_rank = np.empty(n, dtype=np.int64)
        new_rank[order] = np.cumsum(new_group) - 1
        rank = new_rank
        if new_group.all():  # every suffix already distinct
            break
        k *= 2
    return order.astype(np.int32)


class InfiniGram:
    """Next-token counts after the longest matching suffix of a context (see the module docstring).

    `stream` is the corpus as one token array (documents concatenated); lookups cost a binary search per
    matched token, independent of the corpus size apart from a log factor.
    """

    def __init__(self, stream: np.ndarray, suffixes: np.ndarray, max_match: int) -> None:
        if stream.ndim != 1 or suffixes.shape != stream.shape:
            raise ValueError("stream and suffixes must be 1-D arrays of one length")
        self.max_match = max_match
        self.stream = np.ascontiguousarray(stream, dtype=np.int32)  # original order
        self._rev_np = np.ascontiguousarray(self.stream[::-1])
        self._sa_np = np.ascontiguousarray(suffixes, dtype=np.int32)
        # array.array indexes ~10x faster than numpy from Python, which the binary searches do per comparison.
        self._rev = array.array("i", self._rev_np.tobytes())
        self._sa = array.array("i", self._sa_np.tobytes())
        # Interval of the suffixes starting with each token: the first level of every search, without one.
        first = self._rev_np[self._sa_np]
        vocab = int(first.max()) + 2 if len(first) else 1
        self._starts = np.searchsorted(first, np.arange(vocab + 1)).tolist()
        self.cache_size = 65536
        self._dist_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._pinned = self._frequent_distributions()

    def __len__(self) -> int:
        return len(self.stream)

    @classmethod
    def build(cls, docs: Iterable[Sequence[int]], max_match: int = 32) -> InfiniGram:
        """Index `docs` (token id lists, concatenated in order); matches are cut at `max_match` tokens."""
        if max_match < 1:
            raise ValueError(f"max_match must be >= 1, got {max_match}")
        parts = [np.asarray(d, dtype=np.int64) for d in docs]
        stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if len(stream) and stream.min() < 0:
            raise ValueError("token ids must be >= 0")
        if len(stream) >= 2**31 - 1:
            raise ValueError("the stream must hold fewer than 2**31 tokens")
        suffixes = _sorted_suffixes(stream[::-1].copy(), max_match) if len(stream) else np.zeros(0, np.int32)
        return cls(stream.astype(np.int32), suffixes, max_match)

    # ---- lookups ----------------------------------------------------------------------------------------
    def _narrow(self, lo: int, hi: int, depth: int, token: int) -> tuple[int, int]:
        """The part of [lo, hi) (suffixes sharing their first `depth` tokens) whose next token is `token`."""
        rev, n = self._rev, len(self._rev)

        def key(s: int) -> int:
            j = s + depth
            return rev[j] if j < n else -1

        lo2 = bisect.bisect_left(self._sa, token, lo, hi, key=key)
        hi2 = bisect.bisect_right(self._sa, token, lo2, hi, key=key)
        return lo2, hi2

    def longest_match(self, context: Sequence[int]) -> tuple[int, int, int]:
        """(n, lo, hi): the longest suffix of `context` found (n tokens, at most `max_match`) that is followed
        by at least one token, and the suffix-array interval [lo, hi) of its occurrences. n = 0: none."""
        best = (0, 0, 0)
        if not context or not len(self.stream):
            return best
        lo, hi = 0, len(self._sa)
        for depth in range(min(len(context), self.max_match)):
            token = int(context[-1 - depth])
            if depth == 0:
                if token < 0 or token + 1 >= len(self._starts):
                    return best
                lo, hi = self._starts[token], self._starts[token + 1]
            else:
                lo, hi = self._narrow(lo, hi, depth, token)
            if lo >= hi:
                break
            # An occurrence at the very start of the original stream (the end of the reversed one) has no
            # next token; it sorts first in its interval only if it is also the shortest suffix there.
            if hi - lo == 1 and self._sa[lo] == 0:
                break
            best = (depth + 1, lo, hi)
        return best

    def _interval_counts(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, counts) of the tokens that followed the occurrences in suffix-array interval [lo, hi)."""
        if hi - lo <= 16:  # the common case (a long match is rare text): plain Python beats numpy's overhead
            seen: dict[int, int] = {}
            rev, sa = self._rev, self._sa
            for j in range(lo, hi):
                if sa[j] > 0:  # reversed position 0 is the stream's last token: nothing followed it
                    tok = rev[sa[j] - 1]
                    seen[tok] = seen.get(tok, 0) + 1
            ids_sorted = sorted(seen)
            return (
                np.array(ids_sorted, dtype=np.int64),
                np.array([seen[t] for t in ids_sorted], dtype=np.int64),
            )
        pos = self._sa_np[lo:hi].astype(np.int64)
        pos = pos[pos > 0]  # reversed position 0 is the stream's last token: nothing followed it
        nxt = self._rev_np[pos - 1]
        if len(nxt) > 2048:  # a short, frequent context: counting beats sorting (np.unique) by far
            counts = np.bincount(nxt)
            ids = np.flatnonzero(counts)
            return ids.astype(np.int64), counts[ids].astype(np.int64)
        ids, counts = np.unique(nxt, return_counts=True)
        return ids.astype(np.int64), counts.astype(np.int64)

    def _frequent_distributions(
        self, min_size: int = 1024, max_depth: int = 3
    ) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
        """Next-token distributions of every context of 1..max_depth tokens seen >= min_size times.

        Counting a context seen 90,000 times takes milliseconds, and short matches are the common case of
        novel text: computed once here (a fraction of a second for 2M tokens), no lookup pays for more than
        `min_size` occurrences.
        """
        n = len(self._sa_np)
        out: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        if n < min_size:
            return out
        padded = np.concatenate([self._rev_np, np.full(max_depth, -1, dtype=np.int32)])
        change = np.zeros(n, dtype=bool)
        change[0] = True
        for depth in range(max_depth):
            col = padded[self._sa_np.astype(np.int64) + depth]  # token `depth` of each sorted suffix
            change[1:] |= col[1:] != col[:-1]  # interval starts: where the first depth + 1 tokens change
            starts = np.flatnonzero(change)
            ends = np.append(starts[1:], n)
            for lo, hi in zip(
                starts[ends - starts >= min_size].tolist(), ends[ends - starts >= min_size].tolist()
            ):
                ids, counts = self._interval_counts(lo, hi)
                if len(ids):
                    out[(lo, hi)] = (ids, np.log(counts / counts.sum()))
        return out

    def next_counts(self, context: Sequence[int]) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, ids, counts): the tokens that followed the longest matching suffix (n tokens) of `context` in
        the corpus, and how often (int64 arrays, ids ascending); empty arrays when nothing matches."""
        n, lo, hi = self.longest_match(context)
        if n == 0:
            return 0, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        ids, counts = self._interval_counts(lo, hi)
        return n, ids, counts

    def next_distribution(self, context: Sequence[int]) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, ids, log-probabilities) of the next token after the longest matching suffix of `context`.

        Distributions are cached by suffix-array interval: many contexts share their longest match (every
        draft ending in an unseen phrase + " the" falls back to the same few), and decoding asks again for
        the contexts of beams the previous keystroke explored.
        """
        n, lo, hi = self.longest_match(context)
        if n == 0:
            return 0, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        hit = self._pinned.get((lo, hi)) or self._dist_cache.get((lo, hi))
        if hit is None:
            ids, counts = self._interval_counts(lo, hi)
            hit = (ids, np.log(counts / counts.sum()))
            if len(self._dist_cache) >= self.cache_size:
                self._dist_cache.clear()  # a crude bound; refills with what is in use
            self._dist_cache[(lo, hi)] = hit
        return n, hit[0], hit[1]

    # ---- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write stream and suffix array as one safetensors file (atomic); `load` reads it back."""
        from safetensors.torch import save_file

        # Vocabularies below 65536 ids store the stream in 2 bytes a token (the shipped index: 14 vs 19 MB).
        small = not len(self.stream) or int(self.stream.max()) < 2**16
        stream = self.stream.astype(np.uint16) if small else self.stream.copy()
        tensors = {
            "stream": torch.from_numpy(stream),
            "suffixes": torch.from_numpy(self._sa_np.copy()),
        }
        meta = {"max_match": str(self.max_match)}
        return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> InfiniGram:
        """Read a file written by `save`; a missing, truncated or inconsistent file is a CheckpointError."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                stream = f.get_tensor("stream").numpy().astype(np.int32)
                suffixes = f.get_tensor("suffixes").numpy()
            max_match = int(meta["max_match"])
        except Exception as e:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{path}: not a readable ∞-gram index ({type(e).__name__}: {e})") from e
        if stream.shape != suffixes.shape or stream.ndim != 1 or max_match < 1:
            raise CheckpointError(f"{path}: stream and suffix array do not match")
        if len(suffixes) and (suffixes.min() < 0 or suffixes.max() >= len(suffixes)):
            raise CheckpointError(f"{path}: suffix array points outside the stream")
        return cls(stream, suffixes, max_match)


def fit_match_weights(
    match_len: Sequence[int] | np.ndarray,
    p_model: Sequence[float] | np.ndarray,
    p_corpus: Sequence[float] | np.ndarray,
    max_match: int,
    min_positions: int = 200,
    grid: int = 100,
) -> list[float]:
    """Interpolation weights w[0..max_match] that maximise held-out likelihood of
    (1 - w[n]) p_model + w[n] p_corpus, where n is each position's match length.

    Inputs are per held-out position: the match length, and the probability each source gave the token that
    came. Lengths are fitted in buckets of at least `min_positions` positions (walking up from n = 1; the
    remainder joins the last bucket), each by a grid search over w in [0, 0.99]. w[0] = 0 (nothing matched).
    """
    n = np.asarray(match_len, dtype=np.int64)
    pm = np.asarray(p_model, dtype=np.float64)
    pc = np.asarray(p_corpus, dtype=np.float64)
    if not (n.shape == pm.shape == pc.shape):
        raise ValueError("match_len, p_model and p_corpus must have one length")
    ws = np.linspace(0.0, 0.99, grid)[:, None]  # (G, 1)
    weights = [0.0] * (max_match + 1)
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for k in range(1, max_match + 1):
        current.append(k)
        size += int((n == k).sum())
        if size >= min_positions:
            buckets.append(current)
            current, size = [], 0
    if current:
        if buckets:
            buckets[-1].extend(current)
        else:
            buckets.append(current)
    for bucket in buckets:
        sel = np.isin(n, bucket)
        if not sel.any():
            continue
        mix = (1.0 - ws) * pm[sel][None, :] + ws * pc[sel][None, :]  # (G, P)
        nll = -np.log(np.maximum(mix, 1e-30)).sum(axis=1)
        best = float(ws[int(np.argmin(nll)), 0])
        for k in bucket:
            weights[k] = round(best, 4)
    return weights


__all__ = ["InfiniGram", "fit_match_weights"]
