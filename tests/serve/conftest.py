"""Fixtures of the serving tests: tiny checkpoints of all five systems, loaded once through the real
predictors, an ASGI test client and a live uvicorn server on a free loopback port."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serve_helpers import LiveServer, make_config  # noqa: E402
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

from gensys.serve.config import ServeConfig  # noqa: E402


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


@pytest.fixture(scope="session")
def live_server(app):
    with LiveServer(app) as server:
        yield server
