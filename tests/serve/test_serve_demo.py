"""`gensys demo` / `gensys serve` entry points, and the shipped serve config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import DEFAULT_YAML, REPO, free_port

from gensys.config import ConfigError
from gensys.demo import demo_main
from gensys.serve.config import ServeConfig, load_serve_config, resolve_path


def test_shipped_config_loads_with_the_documented_defaults():
    cfg = load_serve_config(DEFAULT_YAML)
    assert isinstance(cfg, ServeConfig) and (cfg.host, cfg.port) == ("127.0.0.1", 8000)
    assert cfg.checkpoint("chat") == REPO / "models" / "chat"
    assert cfg.cors_origins == [] and cfg.api_keys == [] and cfg.batching.enabled
    assert cfg.limits == ServeConfig().limits and cfg.batching == ServeConfig().batching


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="limits.max_tokns"):
        load_serve_config(DEFAULT_YAML, ["limits.max_tokns=5"])
    with pytest.raises(ConfigError, match="port"):
        load_serve_config(DEFAULT_YAML, ["port=http"])
    with pytest.raises(ConfigError, match="unknown system"):
        load_serve_config(None, ["predictor_options.chatbot.x=1"])
    with pytest.raises(ConfigError, match="default_max_tokens"):
        load_serve_config(None, ["limits.max_tokens=8", "limits.default_max_tokens=9"])


def test_paths_resolve_against_cwd_then_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("configs/serve/default.yaml") == DEFAULT_YAML  # not in cwd: the repo's
    (tmp_path / "configs" / "serve").mkdir(parents=True)
    (tmp_path / "configs" / "serve" / "default.yaml").write_text("port: 1\n")
    assert resolve_path("configs/serve/default.yaml") == tmp_path / "configs" / "serve" / "default.yaml"
    monkeypatch.setenv("GENSYS_EVENTS_DB", str(tmp_path / "e.sqlite"))
    assert ServeConfig().events_path() == str(tmp_path / "e.sqlite")


def test_demo_check_lists_systems_and_the_commands_for_missing_ones(tiny_models, tmp_path, capsys):
    base = ["--config", str(DEFAULT_YAML), f"models.chat={tiny_models['chat']}", "models.compose=",
            "models.caption=", "models.rag=", f"events_db={tmp_path / 'ev.sqlite'}",
            f"predictor_options.chat.sessions.db_path={tmp_path / 'sessions.sqlite3'}"]  # fmt: skip
    assert demo_main(["--check", *base, f"models.translate={tmp_path / 'missing'}"]) == 1
    err = capsys.readouterr().err
    assert "gensys serving on http://127.0.0.1:8000" in err
    assert "[x] chat" in err and "[ ] translate" in err
    assert "  gensys translate train --config configs/translate/demo.yaml" in err
    assert demo_main(["--check", *base, "models.translate=", "--port", "8123"]) == 0
    err = capsys.readouterr().err
    assert "http://127.0.0.1:8123" in err and "missing checkpoints" not in err


def test_serve_main_in_a_subprocess_logs_json(tiny_models, tmp_path):
    """`serve_main` as `gensys serve` runs it: real process, real port, JSON lines on stderr."""
    port = free_port()
    args = ["--config", str(DEFAULT_YAML), "--port", str(port), f"models.chat={tiny_models['chat']}",
            "models.compose=", "models.translate=", "models.caption=", "models.rag=",
            f"events_db={tmp_path / 'ev.sqlite'}",
            f"predictor_options.chat.sessions.db_path={tmp_path / 'sessions.sqlite3'}"]  # fmt: skip
    code = f"import sys; from gensys.serve.main import serve_main; sys.exit(serve_main({args!r}))"
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=err, cwd=tmp_path, env={**os.environ})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, Path(log).read_text()[-2000:]
            time.sleep(0.2)
        r = httpx.post(
            url + "/v1/completions", json={"model": "chat", "prompt": "Hi", "max_tokens": 3}, timeout=60
        )
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = Path(log).read_text().splitlines()
    assert any(line.startswith("gensys serving on " + url) for line in lines)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    access = [r for r in records if r["logger"] == "gensys.serve.access"]
    assert [(r["path"], r["status"]) for r in access] == [("/v1/completions", 200)]
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's own logs are JSON too
