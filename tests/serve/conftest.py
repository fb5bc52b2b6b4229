"""Fixtures of the serving tests: tiny checkpoints of all five systems, loaded once through the real
predictors, an ASGI test client and a live uvicorn server on a free loopback port."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serve_models import (  # noqa: E402
    chat_rows,
    compose_rows,
    save_captioner,
    save_chat_dir,
    save_fitted_lm,
    save_rag_index,
    save_seq2seq,
    tiny_tokenizer,
)

from gensys.serve.config import ServeConfig, load_serve_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_YAML = REPO / "configs" / "serve" / "default.yaml"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Checkpoint dirs per system. Compose and chat share one LM fitted to a few emails and chats."""
    root = tmp_path_factory.mktemp("serve_models")
    tok = tiny_tokenizer()
    lm = save_fitted_lm(root / "lm", tok, chat_rows(tok) + compose_rows(tok))
    return {
        "compose": lm,
        "chat": save_chat_dir(root / "chat", lm),
        "translate": save_seq2seq(root / "translate", tok),
        "caption": save_captioner(root / "caption", tok),
        "rag": save_rag_index(root / "rag"),
    }


@pytest.fixture(scope="session")
def refusing_chat(tiny_models, tmp_path_factory) -> Path:
    """A chat checkpoint dir whose safety classifier flags everything (every reply is a refusal)."""
    return save_chat_dir(tmp_path_factory.mktemp("refusing") / "chat", tiny_models["compose"], refuse=True)


@pytest.fixture(scope="session")
def refusing_app(refusing_chat, tmp_path_factory):
    """An app serving only the refusing chat system (its registry outlives any server run on the app)."""
    from gensys.serve.app import create_app
    from gensys.serve.systems import Registry

    tmp = tmp_path_factory.mktemp("refusing_events")
    off = [f"models.{s}=" for s in ("compose", "translate", "caption", "rag")]
    cfg = make_config({"chat": refusing_chat}, tmp, *off)
    reg = Registry.load(cfg)
    yield create_app(cfg, reg)
    reg.close()


def make_config(models: dict[str, Path], tmp: Path, *extra: str) -> ServeConfig:
    """The shipped default.yaml pointed at the tiny models, with deterministic predictor options."""
    overrides = [f"models.{k}={v}" for k, v in models.items()]
    overrides += [
        f"events_db={tmp / 'events.sqlite'}",
        "log_level=warning",
        # a random-weight model is never confident, and this machine is slow: show every suggestion
        "predictor_options.compose.min_confidence=0.0",
        "predictor_options.compose.latency_budget_ms=0",
        "predictor_options.rag.chat_ckpt=",  # extractive answers (the generative path is rag's to test)
        f"predictor_options.chat.config={REPO / 'configs' / 'chat' / 'pipeline.yaml'}",
        'predictor_options.chat.sessions.db_path=":memory:"',
        *extra,
    ]
    return load_serve_config(DEFAULT_YAML, overrides)


@pytest.fixture(scope="session")
def serve_config(tiny_models, tmp_path_factory) -> ServeConfig:
    return make_config(tiny_models, tmp_path_factory.mktemp("serve_events"))


@pytest.fixture(scope="session")
def registry(serve_config):
    from gensys.serve.systems import Registry

    reg = Registry.load(serve_config)
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def app(serve_config, registry):
    from gensys.serve.app import create_app

    return create_app(serve_config, registry)


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    return TestClient(app)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app in a background thread on 127.0.0.1:<free port>."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(app):
    with LiveServer(app) as server:
        yield server
