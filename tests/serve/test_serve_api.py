"""Every endpoint through the ASGI test client, on tiny checkpoints loaded by the real predictors."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from gensys.metrics.events import EventLog


def png_bytes(
    size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG"
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def error_of(r) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"]
    return body["error"]


# ------------------------------------------------------------------------------------------- health
def test_health_ready_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True
    assert {n: s["mounted"] for n, s in ready["systems"].items()} == dict.fromkeys(
        ["compose", "translate", "chat", "caption", "rag"], True
    )
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert sorted(m["id"] for m in models["data"]) == ["caption", "chat", "compose", "rag", "translate"]
    translate = next(m for m in models["data"] if m["id"] == "translate")
    assert (translate["src_lang"], translate["tgt_lang"]) == ("en", "de")


def test_request_id_is_echoed(client):
    r = client.get("/v1/models", headers={"X-Request-ID": "abc123"})
    assert r.headers["x-request-id"] == "abc123"
    assert len(client.get("/healthz").headers["x-request-id"]) > 0


# ------------------------------------------------------------------------------------------ compose
def test_compose_suggests_and_logs_an_impression(client, serve_config, registry):
    body = {
        "text": "Thanks for the update. Please let me ",
        "subject": "Q3 budget",
        "session_id": "s-compose",
    }
    r = client.post("/v1/compose/suggest", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    direct = registry["compose"].predictor.suggest_batch(
        [{"text": body["text"], "subject": "Q3 budget", "previous": "", "cursor": len(body["text"])}]
    )[0]
    assert out["suggestion"] == direct["suggestion"] and out["triggered"] == direct["triggered"]
    assert out["triggered"] and out["suggestion"]
    assert out["request_id"] == r.headers["x-request-id"]
    with EventLog(serve_config.events_path()) as log:
        shown = [
            e for e in log.events(system="compose", event="impression") if e.request_id == out["request_id"]
        ]
    assert len(shown) == 1 and shown[0].session == "s-compose"
    assert shown[0].meta["chars"] == len(out["suggestion"])


def test_compose_errors(client):
    r = client.post("/v1/compose/suggest", json={"text": ""})
    assert r.status_code == 400 and "empty" in error_of(r)["message"]
    r = client.post("/v1/compose/suggest", json={"text": "abc", "cursor": 10})
    assert r.status_code == 400 and error_of(r)["param"] == "cursor"
    r = client.post("/v1/compose/suggest", json={"text": 123})
    assert r.status_code == 422 and error_of(r)["param"] == "text"
    r = client.post("/v1/compose/suggest", json={"text": "hi", "colour": "red"})
    assert r.status_code == 422 and "colour" in error_of(r)["message"]


# ---------------------------------------------------------------------------------------- translate
def test_translate_one_and_many(client, registry):
    r = client.post("/v1/translate", json={"text": "A man is riding a bicycle.", "beam": 2})
    assert r.status_code == 200, r.text
    one = r.json()
    assert len(one["translations"]) == 1 and (one["src_lang"], one["tgt_lang"]) == ("en", "de")
    direct = registry["translate"].predictor.translate(["A man is riding a bicycle."], beam=2)[0]
    assert one["translations"][0]["translation"] == direct["translation"]
    assert one["translations"][0]["score"] == pytest.approx(direct["score"])
    many = client.post("/v1/translate", json={"texts": ["Two dogs.", "", "A lake."], "beam": 1}).json()
    assert [isinstance(t["score"], float) for t in many["translations"]] == [True] * 3
    assert many["translations"][1] == {"translation": "", "score": 0.0}


def test_translate_errors(client, serve_config):
    r = client.post("/v1/translate", json={"text": "a", "texts": ["b"]})
    assert r.status_code == 422 and "exactly one" in error_of(r)["message"]
    r = client.post("/v1/translate", json={"texts": ["x"] * (serve_config.limits.max_texts + 1)})
    assert r.status_code == 400 and error_of(r)["param"] == "texts"
    r = client.post("/v1/translate", json={"text": "x", "beam": serve_config.limits.max_beam + 1})
    assert r.status_code == 400 and "cap" in error_of(r)["message"]
    r = client.post("/v1/translate", json={"text": "x", "beam": 0})
    assert r.status_code == 422 and error_of(r)["param"] == "beam"
    r = client.post("/v1/translate", content=b'{"text": "x"', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in error_of(r)["message"]
    r = client.post("/v1/translate", json=["x"])
    assert r.status_code == 422


# ------------------------------------------------------------------------------------------ caption
def test_caption_upload(client, registry):
    files = [
        ("images", ("red.png", png_bytes(), "image/png")),
        ("images", ("b.png", png_bytes((20, 50)), "image/png")),
    ]
    r = client.post("/v1/caption", files=files, data={"beam": "3", "n_best": "2"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [(x["filename"], x["width"], x["height"]) for x in res] == [("red.png", 40, 30), ("b.png", 20, 50)]
    for x in res:
        assert 1 <= len(x["captions"]) <= 2
        scores = [c["score"] for c in x["captions"]]
        assert scores == sorted(scores, reverse=True)
    direct = registry["caption"].predictor.caption([Image.open(io.BytesIO(png_bytes()))], beam=3, n_best=2)[0]
    assert [c["caption"] for c in res[0]["captions"]] == [c["caption"] for c in direct]


def test_caption_rejects_bad_images(client, serve_config):
    r = client.post("/v1/caption", files=[("images", ("a.txt", b"hello", "text/plain"))])
    assert r.status_code == 415 and "text/plain" in error_of(r)["message"]
    # the file's real format decides, whatever the declared type says
    tiff = png_bytes(fmt="TIFF")
    r = client.post("/v1/caption", files=[("images", ("x.png", tiff, "application/octet-stream"))])
    assert r.status_code == 415 and "image/tiff" in error_of(r)["message"]
    r = client.post("/v1/caption", files=[("images", ("y", png_bytes(), "application/octet-stream"))])
    assert r.status_code == 200
    r = client.post("/v1/caption", files=[("images", ("broken.png", b"\x89PNG\r\n\x1a\nnope", "image/png"))])
    assert r.status_code == 400 and "broken.png" in error_of(r)["message"]
    truncated = png_bytes((64, 64))[:60]
    r = client.post("/v1/caption", files=[("images", ("cut.png", truncated, "image/png"))])
    assert r.status_code == 400
    # a small file that decodes to too many pixels (a decompression bomb) is refused from its header
    bomb = png_bytes((5000, 4000), (0, 0, 0))
    assert len(bomb) < serve_config.limits.max_upload_bytes
    r = client.post("/v1/caption", files=[("images", ("bomb.png", bomb, "image/png"))])
    assert r.status_code == 413 and "20000000 pixels" in error_of(r)["message"]
    r = client.post(
        "/v1/caption", files=[("images", ("a.png", png_bytes(), "image/png"))], data={"n_best": "5"}
    )
    assert r.status_code == 400 and error_of(r)["param"] == "n_best"
    r = client.post("/v1/caption", data={"beam": "3"})
    assert r.status_code == 422 and error_of(r)["param"] == "images"


# ---------------------------------------------------------------------------------------------- rag
def test_rag_answers_with_citations_within_acl(client):
    r = client.post("/v1/rag/ask", json={"question": "How do I mint a token?", "mode": "extractive", "k": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    retrieved = {x["id"] for x in out["retrieved"]}
    assert out["answer"] and out["citations"]
    assert {c["id"] for c in out["citations"]} <= retrieved
    assert out["citations"][0]["title"] == "Minting tokens"
    assert "docs/d/2#0" not in retrieved  # the staff-only document is invisible to "everyone"
    staff = client.post("/v1/rag/ask", json={"question": "on-call rota", "groups": ["staff"], "k": 3}).json()
    assert "docs/d/2#0" in {x["id"] for x in staff["retrieved"]}


def test_rag_errors(client):
    assert client.post("/v1/rag/ask", json={"question": ""}).status_code == 422
    r = client.post("/v1/rag/ask", json={"question": "x", "mode": "poetic"})
    assert r.status_code == 422 and error_of(r)["param"] == "mode"
    r = client.post("/v1/rag/ask", json={"question": "   "})
    assert r.status_code == 400 and "empty" in error_of(r)["message"]


# --------------------------------------------------------------------------------------------- chat
def test_chat_completion_matches_the_model(client, registry):
    messages = [{"role": "user", "content": "hello"}]
    r = client.post("/v1/chat/completions", json={"model": "chat", "messages": messages, "temperature": 0})
    assert r.status_code == 200, r.text
    out = r.json()
    direct = registry["chat"].predictor.pipeline.complete(
        messages, params={"temperature": 0, "max_tokens": 128}
    )
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["message"] == {"role": "assistant", "content": direct["text"], "refusal": None}
    assert out["choices"][0]["finish_reason"] == direct["finish_reason"]
    assert out["usage"] == direct["usage"]
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


def test_chat_n_seed_and_limits(client):
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "n": 3,
        "seed": 7,
        "max_tokens": 6,
    }
    a = client.post("/v1/chat/completions", json={**body, "temperature": 1.5, "top_k": 50}).json()
    b = client.post("/v1/chat/completions", json={**body, "temperature": 1.5, "top_k": 50}).json()
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in a["choices"]] == [c["message"]["content"] for c in b["choices"]]
    assert all(c["finish_reason"] in ("stop", "length") for c in a["choices"])
    assert a["usage"]["completion_tokens"] <= 18


def parse_sse(text: str) -> list:
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_chat_streaming_equals_non_streaming(client):
    body = {"model": "chat", "messages": [{"role": "user", "content": "what is gensys?"}], "temperature": 0}
    full = client.post("/v1/chat/completions", json=body).json()
    r = client.post(
        "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = parse_sse(r.text)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == full["choices"][0]["message"]["content"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == [full["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


def test_chat_streams_several_choices(client):
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "n": 2, "max_tokens": 5}
    chunks = parse_sse(client.post("/v1/chat/completions", json={**body, "stream": True, "seed": 1}).text)
    texts, finish = {0: "", 1: ""}, {}
    for c in chunks:
        choice = c["choices"][0]
        texts[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    full = client.post("/v1/chat/completions", json={**body, "seed": 1}).json()
    assert texts == {c["index"]: c["message"]["content"] for c in full["choices"]}
    assert set(finish) == {0, 1}


def test_chat_errors(client, serve_config):
    ok = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json={**ok, "model": "gpt-4"})
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    r = client.post("/v1/chat/completions", json={**ok, "max_tokens": serve_config.limits.max_tokens + 1})
    assert r.status_code == 400 and error_of(r)["param"] == "max_tokens"
    r = client.post("/v1/chat/completions", json={**ok, "n": serve_config.limits.max_n + 1})
    assert r.status_code == 400 and error_of(r)["param"] == "n"
    r = client.post("/v1/chat/completions", json={**ok, "presence_penalty": 0.5})
    assert r.status_code == 400 and "repetition_penalty" in error_of(r)["message"]
    assert client.post("/v1/chat/completions", json={**ok, "messages": []}).status_code == 422
    r = client.post("/v1/chat/completions", json={**ok, "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 422 and "role" in error_of(r)["param"]
    assert client.post("/v1/chat/completions", json={**ok, "temperature": 3}).status_code == 422
    assert client.post("/v1/chat/completions", json={**ok, "stop": ["a"] * 5}).status_code == 422
    r = client.post("/v1/chat/completions", json={"messages": ok["messages"]})
    assert r.status_code == 422 and error_of(r)["param"] == "model"


def test_chat_accepts_openai_content_parts_and_developer_role(client):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]},
    ]
    r = client.post("/v1/chat/completions", json={"model": "chat", "messages": messages, "max_tokens": 4})
    assert r.status_code == 200, r.text


# -------------------------------------------------------------------------------------- completions
def test_completions(client, registry):
    lm = registry["chat"].predictor.lm
    body = {"model": "chat", "prompt": ["See you at", "Thanks"], "max_tokens": 5, "temperature": 0}
    out = client.post("/v1/completions", json=body).json()
    assert out["object"] == "text_completion" and [c["index"] for c in out["choices"]] == [0, 1]
    direct = lm.complete_text_batch([{"prompt": "See you at", "params": {"max_tokens": 5, "temperature": 0}}])
    assert out["choices"][0]["text"] == direct[0]["text"]
    echo = client.post("/v1/completions", json={**body, "prompt": "See you at", "echo": True}).json()
    assert echo["choices"][0]["text"] == "See you at" + direct[0]["text"]
    r = client.post("/v1/completions", json={**body, "stream": True})
    chunks = parse_sse(r.text)
    by_index = {0: "", 1: ""}
    for c in chunks:
        by_index[c["choices"][0]["index"]] += c["choices"][0]["text"]
    assert by_index == {0: out["choices"][0]["text"], 1: out["choices"][1]["text"]}
    r = client.post("/v1/completions", json={**body, "suffix": "!"})
    assert r.status_code == 400 and error_of(r)["param"] == "suffix"


# ------------------------------------------------------------------------------------ events, misc
def test_events_are_logged_for_the_report(client, serve_config):
    from gensys.metrics.report import run_report

    rid = client.post("/v1/compose/suggest", json={"text": "See you at", "subject": "Meeting"}).json()[
        "request_id"
    ]
    r = client.post("/v1/events", json={"system": "compose", "event": "accept", "request_id": rid,
                                        "latency_ms": 850.0, "meta": {"chars": 12}})  # fmt: skip
    assert r.json() == {"logged": True}
    with EventLog(serve_config.events_path()) as log:
        accepts = [e for e in log.events(system="compose", event="accept") if e.request_id == rid]
    assert accepts[0].latency_ms == 850.0 and accepts[0].meta == {"chars": 12}
    assert "compose" in run_report(serve_config.events_path(), "1d", None)
    r = client.post("/v1/events", json={"system": "compose", "event": "like"})
    assert r.status_code == 422 and error_of(r)["param"] == "event"
    r = client.post("/v1/events", json={"system": "chat", "event": "thumbs_up", "meta": {"x": "y" * 5000}})
    assert r.status_code == 400 and error_of(r)["param"] == "meta"


def test_unknown_routes_and_methods(client):
    r = client.get("/v1/nope")
    assert r.status_code == 404 and "/v1/nope" in error_of(r)["message"]
    r = client.get("/v1/translate")
    assert r.status_code == 405 and error_of(r)


def test_pages_are_served_with_a_strict_csp(client):
    for path in ("/", "/compose", "/translate", "/chat", "/caption", "/rag"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert '<script src="/static/common.js"></script>' in r.text
    assert client.get("/static/chat.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/caption", "/v1/rag/ask"} <= set(spec["paths"])
