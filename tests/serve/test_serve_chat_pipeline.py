"""The chat pipeline behind the OpenAI endpoint: refusals (content_filter), sessions, safety fields."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

HELLO = [{"role": "user", "content": "hello"}]


def sse(text: str) -> list[dict]:
    lines = [ln[6:] for ln in text.split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_refusal_is_a_content_filter_finish(refusing_app):
    client = TestClient(refusing_app)
    r = client.post("/v1/chat/completions", json={"model": "chat", "messages": HELLO})
    assert r.status_code == 200, r.text
    out = r.json()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["refusal"] == choice["message"]["content"] and choice["message"]["content"]
    assert (
        out["safety"][0]["refused"] and out["safety"][0]["stage"] == "input" and out["safety"][0]["flagged"]
    )
    chunks = sse(
        client.post("/v1/chat/completions", json={"model": "chat", "messages": HELLO, "stream": True}).text
    )
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert final[0]["choices"][0]["finish_reason"] == "content_filter" and final[0]["safety"]["refused"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == choice["message"]["content"]


def test_safe_reply_reports_no_refusal(client):
    out = client.post(
        "/v1/chat/completions", json={"model": "chat", "messages": HELLO, "temperature": 0}
    ).json()
    assert out["safety"] == [{"refused": False, "flagged": [], "stage": None}]
    assert out["choices"][0]["finish_reason"] in ("stop", "length")


def test_sessions_belong_to_their_user(client):
    body = {"model": "chat", "messages": HELLO, "temperature": 0, "max_tokens": 8, "user": "ana"}
    sid = client.post("/v1/chat/completions", json=body).json()["session_id"]
    follow = [*HELLO, {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "what is gensys?"}]
    again = client.post("/v1/chat/completions", json={**body, "messages": follow, "session_id": sid}).json()
    assert again["session_id"] == sid
    listed = client.get("/v1/chat/sessions", params={"user": "ana"}).json()["data"]
    assert sid in [x["id"] for x in listed]
    detail = client.get(f"/v1/chat/sessions/{sid}", params={"user": "ana"}).json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant", "user", "assistant"]
    assert detail["messages"][2]["content"] == "what is gensys?"
    assert client.get(f"/v1/chat/sessions/{sid}", params={"user": "bob"}).status_code == 404
    assert sid not in [
        x["id"] for x in client.get("/v1/chat/sessions", params={"user": "bob"}).json()["data"]
    ]
    r = client.delete(f"/v1/chat/sessions/{sid}", params={"user": "ana"})
    assert r.json() == {"id": sid, "deleted": True}
    r = client.get(f"/v1/chat/sessions/{sid}", params={"user": "ana"})
    assert r.status_code == 404 and r.json()["error"]["message"]


def test_pipeline_input_errors_are_4xx_even_when_streaming(client):
    # the pipeline refuses a conversation that does not end with the user before any text is sent
    msgs = [*HELLO, {"role": "assistant", "content": "Hi"}]
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json={"model": "chat", "messages": msgs, "stream": stream})
        assert r.status_code == 400 and "last message" in r.json()["error"]["message"], r.text


def test_text_completions_pass_the_safety_filter_too(refusing_app):
    client = TestClient(refusing_app)
    body = {"model": "chat", "prompt": "See you at", "max_tokens": 5}
    out = client.post("/v1/completions", json=body).json()
    assert out["choices"][0]["finish_reason"] == "content_filter" and out["choices"][0]["text"]
    chunks = sse(client.post("/v1/completions", json={**body, "stream": True}).text)
    assert "".join(c["choices"][0]["text"] for c in chunks) == out["choices"][0]["text"]
