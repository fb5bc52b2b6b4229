"""gensys.serve: one FastAPI server for the five systems (thin handlers over their predictors).

    from gensys.serve import create_app, load_serve_config
    app = create_app(load_serve_config("configs/serve/default.yaml"))

`gensys serve` is `gensys.serve.main:serve_main`; `gensys demo` is `gensys.demo:demo_main`. Layout:
config (ServeConfig), systems (load predictors, 503 reasons), adapters (the predictors' exact APIs),
lm_chat (chat over a plain decoder LM until the chat pipeline ships), batching (dynamic batching),
app (middleware, errors), api (/v1 handlers), pages (+ static/), logs (JSON logs), state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gensys.serve.config import ServeConfig, load_serve_config

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(*args: Any, **kwargs: Any) -> FastAPI:
    """See `gensys.serve.app.create_app` (imported lazily: it pulls in FastAPI)."""
    from gensys.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["ServeConfig", "create_app", "load_serve_config"]
