"""∞-gram index: longest matches and next-token counts equal a brute-force scan of the corpus; weights fit."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from gensys.errors import CheckpointError
from gensys.models.infinigram import InfiniGram, fit_match_weights


def _brute(stream: list[int], context: list[int], max_match: int) -> tuple[int, Counter]:
    """Longest suffix of `context` (<= max_match) followed by a token in `stream`; its next tokens."""
    best = (0, Counter())
    for n in range(1, min(len(context), max_match) + 1):
        suffix = context[-n:]
        nxt = Counter(stream[i + n] for i in range(len(stream) - n) if stream[i : i + n] == suffix)
        if not nxt:
            break
        best = (n, nxt)
    return best


@pytest.mark.parametrize("vocab,max_match", [(3, 4), (5, 8), (50, 32)])
def test_next_counts_equal_brute_force(vocab, max_match):
    rng = random.Random(vocab)
    docs = [[rng.randrange(vocab) for _ in range(rng.randrange(1, 40))] for _ in range(30)]
    docs.append(docs[3][:])  # a repeated document: long matches
    stream = [t for d in docs for t in d]
    index = InfiniGram.build(docs, max_match=max_match)
    contexts = [stream[: rng.randrange(1, len(stream))] for _ in range(60)]
    contexts += [[rng.randrange(vocab) for _ in range(rng.randrange(1, 12))] for _ in range(60)]
    contexts += [[vocab + 5], [], docs[3]]
    for ctx in contexts:
        n, want = _brute(stream, ctx, max_match)
        got_n, ids, counts = index.next_counts(ctx)
        assert got_n == n, ctx
        assert dict(zip(ids.tolist(), counts.tolist())) == dict(want)


def test_sorted_suffixes_by_their_first_tokens():
    rng = random.Random(0)
    docs = [[rng.randrange(4) for _ in range(200)]]
    index = InfiniGram.build(docs, max_match=6)
    rev = docs[0][::-1]
    keys = [tuple(rev[s : s + 6]) for s in index._sa]
    assert keys == sorted(keys)  # a shorter suffix sorts before its continuations


def test_save_load_round_trip_and_corrupt_file(tmp_path):
    index = InfiniGram.build([[1, 2, 3, 1, 2, 4], [1, 2, 3]], max_match=5)
    path = index.save(tmp_path / "m.safetensors")
    again = InfiniGram.load(path)
    assert again.max_match == 5 and np.array_equal(again.stream, index.stream)
    for ctx in ([1, 2], [3, 1, 2], [9]):
        a, b = index.next_counts(ctx), again.next_counts(ctx)
        assert a[0] == b[0] and a[1].tolist() == b[1].tolist() and a[2].tolist() == b[2].tolist()
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="∞-gram"):
        InfiniGram.load(path)


def test_build_rejects_bad_input():
    with pytest.raises(ValueError):
        InfiniGram.build([[1, -2]])
    with pytest.raises(ValueError):
        InfiniGram.build([[1]], max_match=0)
    empty = InfiniGram.build([])
    assert empty.next_counts([1, 2])[0] == 0


def test_fit_match_weights_follows_which_source_is_right():
    rng = np.random.default_rng(0)
    n = np.repeat([1, 2, 10, 20], 500)
    # Short matches: the corpus is noise (model right); long ones: the corpus is right, the model unsure.
    p_model = np.where(n < 5, 0.5, 0.1)
    p_corpus = np.where(n < 5, rng.uniform(0, 0.05, len(n)), 0.95)
    w = fit_match_weights(n, p_model, p_corpus, max_match=32, min_positions=400)
    assert w[0] == 0.0 and len(w) == 33
    assert w[1] < 0.1 and w[2] < 0.1
    assert w[10] > 0.8 and w[20] > 0.8 and w[32] == w[20]  # the tail shares the last bucket's weight
    # The fitted weights beat any single weight on the same data.
    lik = lambda ww: np.log((1 - ww) * p_model + ww * p_corpus).sum()  # noqa: E731
    fitted = lik(np.asarray(w)[n])
    assert all(fitted >= lik(c) for c in np.linspace(0, 0.99, 12))


def test_frequent_short_context_counts_equal_brute_force():
    # Thousands of occurrences: the counting path (bincount) instead of sorting.
    rng = random.Random(1)
    docs = [[rng.randrange(3) for _ in range(9000)]]
    index = InfiniGram.build(docs, max_match=4)
    stream = docs[0]
    for ctx in ([0], [2], [1, 0, 5, 2]):
        n, want = _brute(stream, ctx, 4)
        got_n, ids, counts = index.next_counts(ctx)
        assert got_n == n and sum(want.values()) > 2048
        assert dict(zip(ids.tolist(), counts.tolist())) == dict(want)


def test_next_distribution_is_the_normalised_counts_and_cached():
    index = InfiniGram.build([[1, 2, 3, 1, 2, 4, 1, 2, 3]], max_match=4)
    n, ids, logq = index.next_distribution([7, 1, 2])
    _, ids2, counts = index.next_counts([7, 1, 2])
    assert n == 2 and ids.tolist() == ids2.tolist() == [3, 4]
    assert np.allclose(np.exp(logq), counts / counts.sum())
    assert index.next_distribution([9, 1, 2])[2] is logq  # same interval: the cached arrays
    assert index.next_distribution([9])[0] == 0
