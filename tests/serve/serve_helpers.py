"""Helpers shared by the serving tests (a module with a unique name: `from conftest import` would pick up
whichever conftest.py another test directory loaded first)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from gensys.serve.config import ServeConfig, load_serve_config

REPO = Path(__file__).resolve().parents[2]
DEFAULT_YAML = REPO / "configs" / "serve" / "default.yaml"


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
