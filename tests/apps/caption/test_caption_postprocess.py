"""Fairness rule on hand-made next-token distributions, offensive terms, articles and casing."""

from __future__ import annotations

import pytest
import torch

from gensys.apps.caption.postprocess import (
    AGE_ADJECTIVES,
    ETHNICITY_ADJECTIVES,
    PERSON_NOUNS,
    FairnessLexicon,
    bad_words_ids,
    finish,
    fix_articles,
    neutralize,
    postprocess,
    remove_offensive,
    token_words,
)
from gensys.data.tokenizer import train_bpe

WORDS = [
    *PERSON_NOUNS,
    *AGE_ADJECTIVES,
    *ETHNICITY_ADJECTIVES,
    "a",
    "an",
    "is",
    "in",
    "the",
    "park",
    "riding",
    "bike",
    "with",
    "dog",
    "his",
    "her",
    "he",
    "she",
    "walks",
    "and",
    "runs",
    "old",
    "blue",
]


@pytest.fixture(scope="module")
def tok():
    corpus = [" ".join(WORDS)] * 20 + [f"a {w} is in the park" for w in WORDS] * 5
    return train_bpe(corpus, 700, min_frequency=1)


@pytest.fixture(scope="module")
def lex(tok):
    return FairnessLexicon(tok)


def _case(tok, words: list[str], at: dict[int, dict[str, float]]):
    """Token positions of `words` and a (T, V) distribution that puts the given word masses at word i."""
    tokens = tok.encode(" ".join(words))
    grouped = token_words(tok, tokens)
    assert [w for w, _ in grouped] == words
    probs = torch.zeros(len(tokens), tok.vocab_size)
    for i, masses in at.items():
        (pos,) = grouped[i][1]
        rest = 1.0 - sum(masses.values())
        probs[pos, tok.encode(" dog")[0]] = rest  # the remaining mass on an unrelated word
        for w, m in masses.items():
            probs[pos, tok.encode(" " + w)[0]] += m
    return [ps for _, ps in grouped], probs


def test_every_lexicon_word_is_one_token(lex):
    assert set(lex.noun_ids) == set(PERSON_NOUNS) and set(lex.age_ids) == set(AGE_ADJECTIVES)


def test_confident_gender_is_kept_and_uncertain_is_neutralised(tok, lex):
    words = ["a", "man", "riding", "a", "bike"]
    pos, probs = _case(tok, words, {1: {"man": 0.5, "woman": 0.05, "dog": 0.0}})
    out, changes = neutralize(words, pos, probs, lex, 0.75)
    assert out == words and changes == []  # man: 0.5 / 0.55 = 0.91 of the person mass
    pos, probs = _case(tok, words, {1: {"man": 0.45, "woman": 0.35, "person": 0.1}})
    out, changes = neutralize(words, pos, probs, lex, 0.75)
    assert out == ["a", "person", "riding", "a", "bike"]
    assert changes[0].kind == "gender" and changes[0].confidence == pytest.approx(0.45 / 0.9, abs=1e-4)
    # the neutral alternative counts against the gendered word, too
    pos, probs = _case(tok, words, {1: {"man": 0.6, "person": 0.3}})
    assert neutralize(words, pos, probs, lex, 0.75)[0][1] == "person"
    assert neutralize(words, pos, probs, lex, 0.6)[0][1] == "man"  # the threshold decides


def test_plural_and_child_age_and_pronouns(tok, lex):
    words = ["a", "girl", "with", "her", "dog"]
    pos, probs = _case(tok, words, {1: {"girl": 0.5, "boy": 0.45}})
    out, changes = neutralize(words, pos, probs, lex, 0.75)
    assert out == ["a", "child", "with", "their", "dog"]  # child age is confident (0.95), gender is not
    assert [c.kind for c in changes] == ["gender", "pronoun"]
    words = ["two", "men", "and", "two", "women"]
    pos, probs = _case(tok, words, {1: {"men": 0.9}, 4: {"women": 0.5, "people": 0.5}})
    out, _ = neutralize(words, pos, probs, lex, 0.75)
    assert out == ["two", "men", "and", "two", "people"]
    words = [
        "a",
        "boy",
        "is",
        "in",
        "the",
        "park",
    ]  # gender sure, age unsure (boy vs man): no age guess either
    pos, probs = _case(tok, words, {1: {"boy": 0.5, "man": 0.5}})
    out, changes = neutralize(words, pos, probs, lex, 0.75)
    assert out[1] == "person" and changes[0].kind == "age"
    words = ["she", "walks", "with", "a", "man"]  # "she" follows no kept female noun -> "they"
    pos, probs = _case(tok, words, {4: {"man": 0.95}})
    out, _ = neutralize(words, pos, probs, lex, 0.75)
    assert out == ["they", "walks", "with", "a", "man"]


def test_age_and_ethnicity_adjectives_before_person_nouns(tok, lex):
    words = ["an", "old", "asian", "man"]
    pos, probs = _case(
        tok,
        words,
        {1: {"old": 0.3, "young": 0.3, "man": 0.4}, 2: {"asian": 0.2, "man": 0.8}, 3: {"man": 0.99}},
    )
    out, changes = neutralize(words, pos, probs, lex, 0.75)
    assert out == ["an", "", "", "man"] and {c.kind for c in changes} == {"age", "ethnicity"}
    assert postprocess(words, pos, probs, lex=lex, threshold=0.75).text == "A man."  # article fixed
    pos, probs = _case(tok, words, {1: {"old": 0.9, "man": 0.05}, 2: {"asian": 0.9}, 3: {"man": 0.99}})
    assert neutralize(words, pos, probs, lex, 0.75)[0] == words
    words = ["a", "blue", "bike"]  # colour words are only ethnicity words before a person noun
    pos, probs = _case(tok, words, {})
    assert neutralize(words, pos, probs, lex, 0.99)[0] == words


def test_offensive_terms_articles_and_casing(tok):
    assert remove_offensive(["a", "Stupid,", "dog"], {"stupid"}) == (["a", "dog"], ["Stupid,"])
    assert fix_articles(["a", "apple", "an", "dog", "a", "uniform", "A", "hour"]) == [
        "an", "apple", "a", "dog", "a", "uniform", "An", "hour"]  # fmt: skip
    assert finish("  a dog  runs , fast ") == "A dog runs, fast."
    assert finish("is it?") == "Is it?" and finish("") == ""
    res = postprocess(["a", "stupid", "apple"], blocklist={"stupid"})
    assert res.text == "An apple." and res.removed_offensive == ["stupid"] and res.changes == []
    seqs = bad_words_ids(tok, ["stupid"])
    assert tok.encode(" stupid") in seqs and tok.encode("stupid") in seqs
