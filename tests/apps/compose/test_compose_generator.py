"""Phrase generator: token bytes, the prefix constraint, and the incremental draft cache vs recomputation."""

from __future__ import annotations

import pytest
import torch

from gensys.apps.compose.config import SuggestConfig
from gensys.apps.compose.generator import (
    PrefixConstraint,
    PromptItem,
    SessionState,
    TokenBytes,
    TransformerBackend,
    sync_session,
)
from gensys.apps.compose.predictor import ComposePredictor
from gensys.generate import GenerationConfig, generate


@pytest.fixture(scope="module")
def tb(tiny_tok) -> TokenBytes:
    return TokenBytes(tiny_tok)


def _backend(model, tok, beams=3, new=6) -> TransformerBackend:
    return TransformerBackend(
        model, tok, num_beams=beams, max_new_tokens=new, max_context_tokens=200,
        subject_max_tokens=8, previous_max_tokens=8,
    )  # fmt: skip


def test_token_bytes_round_trip(tiny_tok, tb):
    for text in ["Please let me know.\n\nThanks,  Bob", "café déjà vu — ok", "x\ty  z"]:
        assert tb.decode(tiny_tok.encode(text)) == text.encode("utf-8")


@pytest.mark.parametrize("need", [b" kn", b" ", b"\n", b" the", b"xyzq"])
def test_allowed_tokens_match_brute_force(tb, need):
    want = {t for t, b in enumerate(tb.bytes) if b and (need.startswith(b) or b.startswith(need))}
    assert set(tb.allowed(need).tolist()) == want
    assert tb.allowed(need) is tb.allowed(need)  # cached


def test_prefix_constraint_forces_and_renormalises(tiny_tok, tiny_model, tb):
    prompt = tiny_tok.encode("Please let me")
    ids = torch.tensor([prompt])
    tail = " kn"
    cfg = GenerationConfig(strategy="greedy", max_new_tokens=4)
    proc = PrefixConstraint(tb, [tail], 1, ids.shape[1])
    out = generate(tiny_model, ids, None, cfg, processors=[proc])
    text = tb.decode(out.nbest[0][0].tokens)
    assert text.startswith(tail.encode())
    # While the tail is not covered, only allowed tokens keep probability mass, renormalised to 1.
    logp = torch.log_softmax(torch.randn(1, tb.vocab_size), -1)
    new = proc(ids, logp)
    allowed = tb.allowed(tail.encode())
    assert torch.isinf(new).sum() == tb.vocab_size - allowed.numel()
    assert torch.logsumexp(new[0, allowed], 0).item() == pytest.approx(0.0, abs=1e-5)
    # Once the tail is covered the scores pass through untouched.
    done = torch.tensor([prompt + tiny_tok.encode(" know")])
    assert proc(done, logp) is logp


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_incremental_cache_equals_recomputation(tiny_tok, model_factory, pos):
    model = model_factory(tiny_tok.vocab_size, pos=pos, seed=1)
    state = SessionState()
    be = _backend(model, tiny_tok)

    def full_logits(ids):
        with torch.no_grad():
            return model(torch.tensor([ids]))[:, -1]

    drafts = [
        ("Budget", "Hi Bob,"),
        ("Budget", "Hi Bob, thanks for the"),  # typing at the end: only new tokens run
        ("Budget", "Hi Bob, thanks for the update"),
        ("Budget", "Hi Rob, thanks for the update"),  # an edit before the cursor: crop and recompute after
        ("Budget", "Hi Rob, thanks for the update"),  # nothing changed: no model call
        ("Q3 budget", "Hi Rob, thanks for the update"),  # subject changed: everything after it reruns
        ("Q3 budget", "Hi Rob"),  # deleting text: only a crop
    ]
    prev: list[int] = []
    for subject, text in drafts:
        ids = be.prompt_ids(PromptItem(subject, "", text, " "))
        before = state.computed_tokens
        got = sync_session(model, state, ids)
        torch.testing.assert_close(got, full_logits(ids), atol=1e-5, rtol=1e-5)
        lcp = next((i for i, (a, b) in enumerate(zip(prev, ids)) if a != b), min(len(prev), len(ids)))
        expected_new = 0 if prev == ids else len(ids) - min(lcp, len(ids) - 1)
        assert state.computed_tokens - before == expected_new
        prev = ids
    assert state.cache.length == len(prev)


def test_beam_copy_leaves_the_draft_cache_untouched(tiny_tok, tiny_model):
    from gensys.nn.cache import stack_left_padded

    state = SessionState()
    ids = tiny_tok.encode("Thanks for the update on the")
    logits = sync_session(tiny_model, state, ids).clone()
    work, _ = stack_left_padded([state.cache])  # what SessionStepper.expand decodes on
    work.expand(3)
    with torch.inference_mode():
        tiny_model(torch.tensor([[5], [6], [7]]), cache=work)  # a decoding step on the copy
    assert work.length == len(ids) + 1
    assert state.cache.length == len(ids)
    # Asking again with the same prompt reuses the cached logits, and they are still right.
    before = state.computed_tokens
    torch.testing.assert_close(sync_session(tiny_model, state, ids), logits)
    assert state.computed_tokens == before


def test_session_decoding_equals_batched_decoding(tiny_tok, tiny_model):
    be = _backend(tiny_model, tiny_tok, beams=3)
    items = [
        PromptItem("Lunch", "", "Can we meet", " to"),
        PromptItem("Lunch", "", "Can we meet tomorrow", " "),
        PromptItem("Report", "Please send the report.", "I will send", " "),
    ]
    batched = be.propose(items)  # left-padded batch, fresh cache
    for i, it in enumerate(items):
        alone = be.propose([it])[0]
        sess = be.propose([PromptItem(it.subject, it.previous, it.prefix, it.tail, draft_id=f"d{i}")])[0]
        for a, b, c in zip(batched[i], alone, sess):
            assert a.text == b.text == c.text
            assert a.confidence == pytest.approx(b.confidence, rel=1e-4)
            assert c.confidence == pytest.approx(b.confidence, rel=1e-4)
        assert alone[0].text.startswith(it.tail)


def test_predictor_with_draft_cache_equals_stateless(tiny_tok, tiny_model):
    cfg = SuggestConfig(num_beams=2, max_new_tokens=5, min_confidence=0.0, latency_budget_ms=0)
    with_cache = ComposePredictor(_backend(tiny_model, tiny_tok, beams=2, new=5), cfg)
    stateless = ComposePredictor(_backend(tiny_model, tiny_tok, beams=2, new=5), cfg)
    text = "Thanks for sending the report. I will read it tonight and"
    cuts = [i for i in range(12, len(text) + 1, 5)]
    for c in cuts:
        req = {"text": text[:c], "subject": "Report"}
        a = with_cache.suggest_batch([{**req, "draft_id": "draft-1"}])[0]
        b = stateless.suggest_batch([req])[0]
        for key in ("suggestion", "reason", "triggered"):
            assert a[key] == b[key], (c, key)
        assert a["confidence"] == pytest.approx(b["confidence"], abs=2e-4)
    state = with_cache.backend.sessions.get("draft-1")
    # Typing at the end reused the cache: far fewer tokens ran than recomputing every prompt would.
    assert 0 < state.computed_tokens < 0.5 * sum(len(tiny_tok.encode(text[:c])) for c in cuts)
    with_cache.end_draft("draft-1")
    assert len(with_cache.backend.sessions) == 0


def test_concurrent_drafts_decode_in_one_batch_like_each_alone(tiny_tok, tiny_model):
    """Several drafts in one call (the server's dynamic batch) decode together on their stacked caches."""
    items = [
        PromptItem("Lunch", "", "Can we meet", " to", draft_id="a"),
        PromptItem(
            "Report", "Please send the report.", "I will send it after the meeting", " ", draft_id="b"
        ),
        PromptItem("Lunch", "", "Hi", " ", draft_id="c"),
    ]
    alone = [_backend(tiny_model, tiny_tok).propose([it])[0] for it in items]
    be = _backend(tiny_model, tiny_tok)
    for _ in range(2):  # the second round finds every draft cached: no prompt token runs again
        before = [be.sessions.get(it.draft_id).computed_tokens for it in items]
        together = be.propose(items)
        for got, want in zip(together, alone):
            assert [c.text for c in got] == [c.text for c in want]
            assert [c.confidence for c in got] == pytest.approx([c.confidence for c in want], rel=1e-4)
    assert [be.sessions.get(it.draft_id).computed_tokens for it in items] == before
    for it in items:  # beams decoded on a copy: each draft's cache still holds just its prompt
        st = be.sessions.get(it.draft_id)
        assert st.cache.length == len(st.ids) == len(be.prompt_ids(it))
    # Two keystrokes of one draft in one call: decoded one after the other, both answered.
    twice = [items[0], PromptItem("Lunch", "", "Can we meet to", "morrow", draft_id="a")]
    out = be.propose(twice)
    assert out[0] is not None and out[1] is not None
    assert [c.text for c in out[0]] == [c.text for c in alone[0]]
    assert all(c.text.startswith("morrow") for c in out[1])


def test_a_row_budget_gives_each_draft_of_a_big_call_fewer_beams(tiny_tok, tiny_model):
    be = _backend(tiny_model, tiny_tok, beams=4)
    be.max_beam_rows, be.min_beams = 8, 2
    assert [be.beams_for(n) for n in (1, 2, 3, 4, 8)] == [4, 4, 2, 2, 2]  # never fewer than min_beams
    items = [
        PromptItem("Lunch", "", "Can we meet", " to", draft_id="a"),
        PromptItem("Report", "", "I will send it after the meeting", " ", draft_id="b"),
        PromptItem("Lunch", "", "Hi", " ", draft_id="c"),
    ]
    two = _backend(tiny_model, tiny_tok, beams=2)
    alone = [two.propose([PromptItem(it.subject, it.previous, it.prefix, it.tail)])[0] for it in items]
    for got, want in zip(be.propose(items), alone):  # 3 drafts x 4 beams > 8 rows: 2 beams each
        assert [c.text for c in got] == [c.text for c in want]
        assert [c.confidence for c in got] == pytest.approx([c.confidence for c in want], rel=1e-4)
    assert len(be.propose(items[:2])[0]) == 4  # 2 drafts x 4 beams fit: all 4 beams
    be.min_beams, be.max_beam_rows = 1, 2  # under heavy load one beam each: greedy, like each draft alone
    one = _backend(tiny_model, tiny_tok, beams=1)
    alone = [one.propose([PromptItem(it.subject, it.previous, it.prefix, it.tail)])[0] for it in items]
    for got, want in zip(be.propose(items), alone):
        assert [c.text for c in got] == [c.text for c in want] and len(got) == 1


def test_stopping_at_the_word_limit_ends_hypotheses_early(tiny_tok, tiny_model):
    items = [
        PromptItem("Lunch", "", "Can we meet", " to", draft_id=None),
        PromptItem("Report", "", "I will send it after the meeting", " ", draft_id=None),
    ]
    free = _backend(tiny_model, tiny_tok, beams=3, new=12).propose(items)
    be = _backend(tiny_model, tiny_tok, beams=3, new=12)
    be.stop_after_words = 1
    short = be.propose(items)
    for cands, it in zip(short, items):
        for c in cands:
            assert len(c.text[len(it.tail) :].split()) <= 2  # at most the word limit and one begun word
            assert c.ended in ("eos", "stop", "length")
    # Without the stop some candidates run past it (the random model rarely ends on its own).
    assert any(len(c.text[len(it.tail) :].split()) > 2 for cands, it in zip(free, items) for c in cands)


def test_typing_in_several_drafts_syncs_them_in_one_batch_like_each_alone(tiny_tok, tiny_model):
    """Drafts with caches run their new tokens as one left-padded batch; logits and caches = one by one."""
    from gensys.apps.compose.generator import sync_sessions

    be = _backend(tiny_model, tiny_tok)
    steps = [  # (subject, text) per draft, typed in two rounds; draft 2 edits before its cursor
        [("Lunch", "Can we meet"), ("Lunch", "Can we meet tomorrow at noon")],
        [("Report", "I will send it"), ("Report", "I will send it after")],
        [("Re: plan", "Thanks, that works"), ("Re: plan", "Thanks, this works for me")],
    ]
    together = [SessionState() for _ in steps]
    alone = [SessionState() for _ in steps]
    for rnd in range(2):
        prompts = [be.prompt_ids(PromptItem(d[rnd][0], "", d[rnd][1], " ")) for d in steps]
        got = sync_sessions(tiny_model, together, prompts)
        want = torch.cat([sync_session(tiny_model, st, ids) for st, ids in zip(alone, prompts)])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for a, b in zip(together, alone):
            assert a.ids == b.ids and a.computed_tokens == b.computed_tokens
            assert a.cache.length == b.cache.length
            for layer in range(a.cache.n_layers):
                torch.testing.assert_close(
                    a.cache.keys_values(layer), b.cache.keys_values(layer), atol=1e-5, rtol=1e-5
                )


def test_memory_lets_a_random_model_complete_a_training_email(tiny_tok, tiny_model, emails):
    from gensys.apps.compose.memory import build_memory

    index = build_memory(emails, tiny_tok, max_match=16)
    # An email whose first 13 words are separated by single spaces (the prefix below is rebuilt from words).
    body = next(e.body for e in emails if e.body.startswith(" ".join(e.body.split()[:13])))
    words = body.split()
    prefix, truth = " ".join(words[:10]), " ".join(words[10:13])
    item = PromptItem("", "", prefix, " ")
    plain = _backend(tiny_model, tiny_tok, beams=2, new=8).propose([item])[0]
    be = _backend(tiny_model, tiny_tok, beams=2, new=8)
    be.memory = (index, [0.0] + [0.99 - 1e-3] * 16)
    best = be.propose([item])[0][0]
    assert best.text.strip().startswith(truth)  # a random LM with the memory recalls the email
    assert not plain[0].text.strip().startswith(truth)
