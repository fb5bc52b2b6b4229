"""The n-gram baseline: a normalised backoff LM and a phrase completer."""

from __future__ import annotations

import math

import pytest

from gensys.apps.compose.generator import PromptItem
from gensys.apps.compose.ngram import EOS, NgramBackend, NgramLM

TEXTS = [
    "Please let me know if you have any questions.",
    "Please let me know if you need anything else.",
    "Please let me know what you think.",
    "Let me know if you have any questions.",
    "I will send the file tomorrow.",
    "I will call you tomorrow.",
]


@pytest.fixture(scope="module")
def lm() -> NgramLM:
    return NgramLM.train(TEXTS, order=4, discount=0.75, min_count=1)


@pytest.mark.parametrize("history", [(), ("let", "me"), ("Please", "let", "me"), ("never", "seen", "this")])
def test_probabilities_sum_to_one(lm, history):
    # Over the vocabulary plus the one slot that every unseen word shares, each distribution sums to 1.
    vocab = list(lm.next[0][()])
    total = sum(lm.prob(w, history) for w in vocab) + lm.prob("<an-unseen-word>", history)
    assert total == pytest.approx(1.0, abs=1e-9)


def test_longer_context_sharpens_the_prediction(lm):
    assert lm.prob("know", ("Please", "let", "me")) > lm.prob("know", ()) * 5
    assert lm.prob("tomorrow.", ("send", "the", "file")) > 0.5


def test_pruning_and_save_load_round_trip(tmp_path, lm):
    pruned = NgramLM.train(TEXTS, order=4, min_count=2)
    assert ("will", "send") not in pruned.next[2]  # seen once
    assert ("let", "me") in pruned.next[2]
    path = lm.save(tmp_path / "ng.json.gz")
    back = NgramLM.load(path)
    for h in [(), ("let", "me"), ("I", "will")]:
        assert back.prob("know", h) == pytest.approx(lm.prob("know", h))


def test_completer_finds_the_frequent_phrase(lm):
    be = NgramBackend(lm, max_words=5, beam=3)
    words, score, ended = be.complete("Please let me", "")[0]
    assert words[:3] == ["know", "if", "you"]
    assert -10 < score < 0
    # A half-typed word restricts the first word.
    words, _, _ = be.complete("I will", "ca")[0]
    assert words[0] == "call"
    # Candidates end at sentence punctuation.
    words, _, ended = be.complete("I will send the", "")[0]
    assert words == ["file", "tomorrow."] and ended == "stop"
    assert EOS not in words


def test_backend_candidates_start_with_the_tail(lm):
    be = NgramBackend(lm, max_words=4, beam=2)
    out = be.propose([
        PromptItem("", "", "I will", " ca"),
        PromptItem("", "", "Please let me", " "),
        PromptItem("", "", "Thanks.\n", ""),  # a line start: no space before the first word
    ])  # fmt: skip
    assert out[0][0].text.startswith(" call")
    assert out[1][0].text.startswith(" know")
    assert out[2][0].text[:1].isalpha()
    assert all(0 < c.confidence <= 1 for cands in out for c in cands)
    assert math.isclose(out[1][0].confidence, math.exp(be.complete("Please let me", "")[0][1]))
