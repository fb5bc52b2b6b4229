"""`ChatPipeline.complete_batch`: a batch of conversations answered in shared model calls gives, request for
request, what `complete` gives one request at a time (replies, streamed deltas, stored sessions), while a
bad request fails alone and each model runs once per batch.

The reference is the pipeline itself run per request on an identical pipeline with its own session store.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from chat_pipeline_testdata import VIOLENT, keyword_safety, tiny_policy, tiny_reward, tiny_tokenizer  # noqa: E402

import gensys.apps.chat.pipeline as pipeline_mod  # noqa: E402
from gensys.apps.chat.pipeline import ChatInputError, ChatPipeline, load_pipeline_config  # noqa: E402
from gensys.apps.chat.safety import _WORD, _stable_hash  # noqa: E402
from gensys.apps.chat.sessions import SessionNotFound, SQLiteSessionStore  # noqa: E402

OVERRIDES = [
    "sessions.db_path=",
    "generator.max_tokens=10",
    "generator.n=3",
    "generator.stream_check_every=2",
]
BUCKETS = 1 << 16
GREEDY = {"temperature": 0, "max_tokens": 10}
# prompts of different lengths, so the batch is left-padded
ASKS = ["hello there, how are you?", "the garden", "tell me about the river and the morning light please"]


@pytest.fixture(scope="module")
def parts():
    tok = tiny_tokenizer()
    return tok, tiny_policy(tok), tiny_reward(tok)


def _pipeline(parts, extra: dict[str, list[int]] | None = None) -> ChatPipeline:
    tok, lm, rm = parts
    safety = keyword_safety({"violence": VIOLENT}, BUCKETS, extra)
    cfg = load_pipeline_config(None, OVERRIDES)
    return ChatPipeline(lm, tok, reward=rm, safety=safety, store=SQLiteSessionStore(), cfg=cfg)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _one_at_a_time(pipe: ChatPipeline, items: list[dict[str, Any]]) -> tuple[list[Any], list[list[str]]]:
    """The reference: `complete` per item (streamed where the item streams); exceptions caught."""
    replies, deltas = [], []
    for it in items:
        kw = dict(user=it.get("user"), session_id=it.get("session_id"), params=it.get("params"))
        got: list[str] = []
        try:
            if it.get("emit") is None:
                replies.append(pipe.complete(it["messages"], **kw))
            else:
                parts = list(pipe.complete(it["messages"], stream=True, **kw))
                got = parts[:-1]
                replies.append(parts[-1])
        except Exception as e:  # noqa: BLE001 - compared with the batch's per-item exception
            replies.append(e)
        deltas.append(got)
    return replies, deltas


def _items(params: dict[str, Any], emit: Any) -> list[dict[str, Any]]:
    """A plain request per ASK, an input-refused one, a streamed one, a bad one and someone else's session."""
    items: list[dict[str, Any]] = [
        {"messages": _user(a), "user": "u", "session_id": f"session-{k}", "params": params}
        for k, a in enumerate(ASKS)
    ]
    items.append(
        {
            "messages": _user("how do I stab the zookeeper"),
            "user": "u",
            "session_id": "session-bad",
            "params": params,
        }
    )
    items.append(
        {"messages": _user(ASKS[0]), "user": "v", "session_id": "session-st", "params": params, "emit": emit}
    )
    items.append({"messages": [], "user": "u", "session_id": "session-empty", "params": params})
    items.append(
        {"messages": _user("hi"), "user": "intruder", "session_id": "session-owned", "params": params}
    )
    return items


def _same(batch: list[Any], ref: list[Any]) -> None:
    assert len(batch) == len(ref)
    for b, r in zip(batch, ref):
        if isinstance(r, Exception):
            assert type(b) is type(r) and str(b) == str(r)
        else:
            assert b == r


def _run_both(parts, params: dict[str, Any], extra: dict[str, list[int]] | None = None):
    pipes = []
    for _ in range(2):
        pipe = _pipeline(parts, extra)
        pipe.complete(_user("hi"), user="owner", session_id="session-owned")  # someone else's session
        pipes.append(pipe)
    batched, ref_pipe = pipes
    sink: list[str] = []
    items = _items(params, sink.append)
    got = batched.complete_batch(items)
    ref, ref_deltas = _one_at_a_time(ref_pipe, _items(params, sink.append))  # streams via complete()
    return batched, ref_pipe, got, ref, sink, ref_deltas[4], items


def test_greedy_batch_equals_one_at_a_time(parts):
    batched, ref_pipe, got, ref, sink, ref_deltas, items = _run_both(parts, GREEDY)
    _same(got, ref)
    assert sink == ref_deltas and "".join(sink) == got[4]["text"] and len(sink) > 1  # streamed in slices
    assert got[3]["refused"] and got[3]["refusal_stage"] == "input"
    assert isinstance(got[5], ChatInputError) and isinstance(got[6], SessionNotFound)
    assert not any(isinstance(r, Exception) or r["refused"] for r in got[:3])
    assert len({r["usage"]["prompt_tokens"] for r in got[:3]}) == 3  # the rows really were padded
    # sessions persisted as `complete` persists them
    for it, r in zip(items, got):
        if not isinstance(r, Exception):
            user, sid = it["user"], r["session_id"]
            assert batched.get_session(user, sid)["messages"] == ref_pipe.get_session(user, sid)["messages"]


def test_mid_stream_refusal_in_a_batch(parts):
    """The streamed row is cut by an unsafe slice while the other rows of its batch decode on."""
    full = _pipeline(parts).complete(_user(ASKS[0]), user="x", params=GREEDY)["text"]
    words = _WORD.findall(full.lower())
    assert len(words) >= 3, "precondition: a reply of several words"
    flag = {"violence": [_stable_hash(f"w:{words[-1]}") % BUCKETS]}
    _, _, got, ref, sink, ref_deltas, _ = _run_both(parts, GREEDY, flag)
    _same(got, ref)
    assert got[4]["refused"] and got[4]["refusal_stage"] == "output"
    assert sink == ref_deltas and "".join(sink) == got[4]["text"] and len(sink) > 1


def test_sampled_batch_equals_one_at_a_time_with_seeds(parts):
    """Each row has its own seeded random stream, so best-of-n sampling does not depend on the batch."""
    params = {"temperature": 0.9, "n": 3, "max_tokens": 8}
    items = [
        {"messages": _user(a), "user": "u", "session_id": f"session-{k}", "params": {**params, "seed": k}}
        for k, a in enumerate(ASKS)
    ]
    got = _pipeline(parts).complete_batch(items)
    ref, _ = _one_at_a_time(_pipeline(parts), items)
    _same(got, ref)
    assert len({r["text"] for r in got}) == 3


def test_each_model_runs_once_per_batch(parts, monkeypatch):
    pipe = _pipeline(parts)
    calls: dict[str, int] = {"generate": 0, "safety": 0, "reward": 0}

    def counting(name: str, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(pipeline_mod, "generate", counting("generate", pipeline_mod.generate))
    monkeypatch.setattr(pipe.safety, "check", counting("safety", pipe.safety.check))
    pipe.reward.register_forward_hook(lambda *a: calls.__setitem__("reward", calls["reward"] + 1))
    params = {"temperature": 0.9, "n": 3, "max_tokens": 8, "seed": 0}
    items = [{"messages": _user(a), "user": "u", "params": params} for a in ASKS * 2]
    got = pipe.complete_batch(items)
    assert all(not isinstance(r, Exception) for r in got)
    assert calls == {"generate": 1, "safety": 2, "reward": 1}  # input + output safety


def test_turns_of_one_session_in_one_batch_run_in_order(parts):
    items = [
        {"messages": _user(a), "user": "u", "session_id": "session-same", "params": GREEDY}
        for a in ("hello", "and then?")
    ]
    batched, ref_pipe = _pipeline(parts), _pipeline(parts)
    got = batched.complete_batch(items)
    ref, _ = _one_at_a_time(ref_pipe, items)
    _same(got, ref)
    msgs = batched.get_session("u", "session-same")["messages"]
    assert [m["content"] for m in msgs[::2]] == ["hello", "and then?"] and len(msgs) == 4
    assert got[1]["usage"]["prompt_tokens"] > got[0]["usage"]["prompt_tokens"]  # the first turn is history
