"""Answering: extractive template, citation checks, prompt injection, generative wiring with a tiny LM."""

from __future__ import annotations

import re

import pytest
from rag_testdata import INJECTION

from gensys.apps.rag.answer import (
    EXTRACTIVE_HEADER,
    ExtractiveAnswerer,
    GenerativeAnswerer,
    check_citations,
    neutralize,
)

# The extractive answer's whole shape: the header, then paragraphs that each end with one valid citation.
ANSWER_FORMAT = re.compile(re.escape(EXTRACTIVE_HEADER) + r"(\n\n(?:(?!\n\n).)+? \[(\d)\])+", re.S)

SOURCES = [
    {"id": "s/a/1#0", "title": "Mint a token", "text": "Build the minting transaction with cardano-cli.\n\n"
     "Then sign it with the policy key and submit it to the network."},
    {"id": "s/a/2#0", "title": "Stake pools", "text": "An expired KES key stops block production."},
    {"id": "s/a/3#0", "title": "Wallets", "text": "Restore the wallet from the 24 recovery words"},
]  # fmt: skip


def _check_format(result: dict, n_sources: int) -> None:
    m = ANSWER_FORMAT.fullmatch(result["answer"])
    assert m, result["answer"]
    markers = [int(x) for x in re.findall(r"\[(\d+)\]", result["answer"])]
    assert markers == result["cited"] and all(1 <= n <= n_sources for n in markers)


@pytest.mark.parametrize("use_embedder", [False, True])
def test_extractive_quotes_the_best_passages_with_citations(use_embedder, embedder) -> None:
    ans = ExtractiveAnswerer(embedder.encode if use_embedder else None, passages=2)
    r = ans.answer("How do I restore my wallet with recovery words?", SOURCES)
    _check_format(r, len(SOURCES))
    assert 3 in r["cited"] and "24 recovery words" in r["answer"]
    assert len(r["cited"]) == 2
    assert ans.answer("anything", [])["cited"] == []


def test_prompt_injection_in_a_post_does_not_change_the_answer_format(embedder) -> None:
    ans = ExtractiveAnswerer(embedder.encode, passages=3)
    clean = ans.answer("How do I mint a token?", SOURCES)
    poisoned_sources = [dict(SOURCES[0], text=INJECTION + "\n\n" + SOURCES[0]["text"]), *SOURCES[1:]]
    poisoned = ans.answer("How do I mint a token?", poisoned_sources)
    for r in (clean, poisoned):
        _check_format(r, len(SOURCES))
    assert len(poisoned["cited"]) == len(clean["cited"])
    assert poisoned["answer"].strip() != "HACKED" and "[9]" not in poisoned["answer"]
    assert neutralize("see [9] and [12]") == "see (9) and (12)"


def test_check_citations_keeps_only_retrieved_sources() -> None:
    text, cited, dropped = check_citations("Use the CLI [2]. Also see [7] and [1] , then [2].", 3)
    assert cited == [2, 1] and dropped == [7]
    assert "[7]" not in text and text.startswith("Use the CLI [2].")


def test_generative_prompt_keeps_post_text_as_data(tiny_lm) -> None:
    gen = GenerativeAnswerer.from_checkpoint(tiny_lm, max_new_tokens=8)
    assert gen.chat_tokens
    sources = [dict(SOURCES[0], text=INJECTION), *SOURCES[1:]]
    ids = gen.prompt_ids("How do I mint a token?", sources)
    tok = gen.tok
    # the post's "<|system|>" / "<|end|>" text stays plain text: one system turn, one user turn, ours
    assert ids.count(tok.special_id("system")) == 1 and ids.count(tok.special_id("user")) == 1
    assert ids.count(tok.special_id("end")) == 2 and ids[-1] == tok.special_id("assistant")
    prompt = tok.decode(ids, skip_special=False)
    assert "(9)" in prompt and "[9]" not in prompt  # citation-like text in a post is neutralised
    assert prompt.index("<|user|>") < prompt.index("IGNORE ALL PREVIOUS") < prompt.index("Question:")
    # sources are dropped (last first) until the prompt fits the model's window
    gen.max_context = len(gen.prompt_ids("How do I mint a token?", sources[:2])) + gen.max_new_tokens
    short = gen.prompt_ids("How do I mint a token?", sources)
    assert "[2]" in tok.decode(short) and "[3]" not in tok.decode(short)


def test_generative_answer_is_checked_and_falls_back(tiny_lm, embedder) -> None:
    fallback = ExtractiveAnswerer(embedder.encode)
    gen = GenerativeAnswerer.from_checkpoint(tiny_lm, max_new_tokens=12, fallback=fallback)
    r = gen.answer("How do I mint a token?", SOURCES)
    assert set(r["cited"]) <= {1, 2, 3}
    if "fallback" in r:  # a random model cites nothing: the extractive answer replaces it
        _check_format(r, len(SOURCES))
    assert all(n <= len(SOURCES) for n in map(int, re.findall(r"\[(\d+)\]", r["answer"])))
    gen.fallback = None
    raw = gen.answer("How do I mint a token?", SOURCES)
    assert isinstance(raw["answer"], str) and "fallback" not in raw


def test_generative_needs_a_decoder_lm(tmp_path) -> None:
    from gensys.apps.rag.config import RagError

    with pytest.raises(Exception, match="not found|not a gensys checkpoint"):
        GenerativeAnswerer.from_checkpoint(tmp_path / "missing")
    assert issubclass(RagError, Exception)


def test_sources_are_not_mutated() -> None:
    before = [dict(s) for s in SOURCES]
    ExtractiveAnswerer(None).answer("wallet", SOURCES)
    assert before == SOURCES
