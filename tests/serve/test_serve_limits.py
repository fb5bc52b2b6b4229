"""Limits and safety: API keys, body size, in-flight cap, timeouts, CORS, unmounted systems, JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
from fastapi.testclient import TestClient
from serve_helpers import make_config

from gensys.serve.app import create_app
from gensys.serve.systems import Registry

CHAT = {
    "model": "chat",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 24,
    "temperature": 0,
}


def app_with(tiny_models, registry, tmp_path, *overrides: str):
    """An app over the shared loaded systems with other limits (the registry stays open after it)."""
    return create_app(make_config(tiny_models, tmp_path, *overrides), registry)


def test_api_keys(tiny_models, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("GENSYS_API_KEYS", "env-key, other")
    client = TestClient(app_with(tiny_models, registry, tmp_path, "api_keys=[cfg-key]"))
    r = client.get("/v1/models")
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    for key in ("cfg-key", "env-key", "other"):
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # probes and pages need no key
    assert client.get("/chat").status_code == 200


def test_body_size_limit(tiny_models, registry, tmp_path):
    client = TestClient(app_with(tiny_models, registry, tmp_path, "limits.max_body_bytes=300"))
    r = client.post("/v1/translate", json={"text": "x" * 400})
    assert r.status_code == 413 and "300 bytes" in r.json()["error"]["message"]

    def chunked():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(10):
            yield b" " * 100

    r = client.post("/v1/translate", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.post("/v1/translate", json={"text": "a dog"}).status_code == 200


def test_prompt_length_limit(tiny_models, registry, tmp_path):
    client = TestClient(app_with(tiny_models, registry, tmp_path, "limits.max_prompt_chars=10"))
    r = client.post(
        "/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "x" * 11}]}
    )
    assert r.status_code == 400 and "limit is 10" in r.json()["error"]["message"]


def test_inflight_cap_answers_429(tiny_models, registry, tmp_path):
    app = app_with(tiny_models, registry, tmp_path, "limits.max_inflight=1")

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=CHAT) for _ in range(3)))
        return [r.status_code for r in rs]

    codes = asyncio.run(burst())
    assert sorted(codes) == [200, 429, 429]


def test_timeout_answers_504(tiny_models, registry, tmp_path):
    client = TestClient(app_with(tiny_models, registry, tmp_path, "limits.request_timeout_s=0.001"))
    r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 64})
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"


def test_cors_is_off_by_default(client, tiny_models, registry, tmp_path):
    origin = {"Origin": "http://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/v1/models", headers=origin).headers
    cors = TestClient(app_with(tiny_models, registry, tmp_path, "cors_origins=[http://elsewhere.example]"))
    r = cors.get("/v1/models", headers=origin)
    assert r.headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_unmounted_systems_say_how_to_make_them(tiny_models, tmp_path):
    cfg = make_config(
        {"chat": tiny_models["chat"]}, tmp_path, "models.compose=", f"models.translate={tmp_path}/none",
        "models.caption=", "models.rag=",
    )  # fmt: skip
    reg = Registry.load(cfg)
    try:
        client = TestClient(create_app(cfg, reg))
        r = client.post("/v1/translate", json={"text": "hello"})
        err = r.json()["error"]
        assert r.status_code == 503 and err["code"] == "system_unavailable"
        assert "gensys translate train --config configs/translate/demo.yaml" in err["message"]
        assert f"{tmp_path}/none" in err["message"]
        r = client.post("/v1/compose/suggest", json={"text": "hi"})
        assert r.status_code == 503 and "switched off" in r.json()["error"]["message"]
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["chat"]
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    finally:
        reg.close()


def test_broken_checkpoint_is_a_503_not_a_crash(tmp_path):
    broken = tmp_path / "translate"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cfg = make_config({"translate": broken}, tmp_path, "models.compose=", "models.chat=", "models.caption=",
                      "models.rag=")  # fmt: skip
    reg = Registry.load(cfg)
    msg = reg["translate"].error
    assert not reg["translate"].mounted and "config.json" in msg and "not valid JSON" in msg


def test_access_log_is_json(client):
    from gensys.serve.logs import JsonFormatter

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("gensys.serve.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        client.post("/v1/translate", json={"text": 1})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["msg"] == "request" and line["path"] == "/v1/translate" and line["status"] == 422
    assert line["level"] == "info" and isinstance(line["latency_ms"], float) and line["request_id"]
