"""The official `openai` Python client against a live uvicorn server on 127.0.0.1 (real sockets, real SSE)."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture(scope="module")
def oai(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", timeout=120, max_retries=0)


def test_models(oai):
    assert sorted(m.id for m in oai.models.list()) == ["caption", "chat", "compose", "rag", "translate"]


def test_chat_completion_and_stream_agree(oai):
    messages = [{"role": "user", "content": "hello"}]
    full = oai.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=40)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    stream = oai.chat.completions.create(
        model="chat", messages=messages, temperature=0, max_tokens=40, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == choice.message.content and finish == choice.finish_reason
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens


def test_chat_extra_knobs_and_n(oai):
    out = oai.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], n=2, seed=11, temperature=0.9, top_p=0.9,
        max_tokens=6, stop=["\n"], extra_body={"top_k": 20, "repetition_penalty": 1.2},
    )  # fmt: skip
    assert [c.index for c in out.choices] == [0, 1]


def test_completions_and_stream(oai):
    out = oai.completions.create(model="chat", prompt="See you at", max_tokens=6, temperature=0)
    assert out.object == "text_completion" and out.usage.completion_tokens <= 6
    parts = [c.choices[0].text for c in oai.completions.create(
        model="chat", prompt="See you at", max_tokens=6, temperature=0, stream=True
    )]  # fmt: skip
    assert "".join(parts) == out.choices[0].text


def test_errors_arrive_as_openai_exceptions(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "not found" in e.value.message
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=100000
        )


def _stream_turn(
    oai: openai.OpenAI, messages: list[dict], user: str, session_id: str | None
) -> tuple[str, str]:
    extra = {"session_id": session_id} if session_id else {}
    stream = oai.chat.completions.create(
        model="chat",
        messages=messages,
        temperature=0,
        max_tokens=12,
        stream=True,
        user=user,
        extra_body=extra,
    )
    text, sid = "", None
    for chunk in stream:
        sid = (chunk.model_extra or {}).get("session_id") or sid
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert sid, "the stream names its session"
    return text, sid


def test_multi_turn_streaming_conversation_is_private_to_its_user(oai, live_server):
    import httpx

    messages = [{"role": "user", "content": "hello"}]
    reply, sid = _stream_turn(oai, messages, "ana", None)
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "and then?"}]
    reply2, sid2 = _stream_turn(oai, messages, "ana", sid)
    assert sid2 == sid
    # the server kept the whole conversation under ana's session ...
    detail = httpx.get(f"{live_server.url}/v1/chat/sessions/{sid}", params={"user": "ana"}, timeout=30).json()
    assert [m["content"] for m in detail["messages"]] == ["hello", reply, "and then?", reply2]
    # ... which bob can neither read nor continue
    assert httpx.get(f"{live_server.url}/v1/chat/sessions/{sid}", params={"user": "bob"}).status_code == 404
    with pytest.raises(openai.APIStatusError) as e:
        _stream_turn(oai, messages, "bob", sid)
    assert e.value.status_code in (403, 404)
