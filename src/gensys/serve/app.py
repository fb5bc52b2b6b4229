"""The FastAPI application: `create_app(cfg)` wires config, systems, limits, logging, API and pages.

    app = create_app(load_serve_config("configs/serve/default.yaml"))   # loads every configured system
    uvicorn.run(app, host="127.0.0.1", port=8000)

Requests pass one ASGI guard (`Guard`) before any handler: it gives each request an id, reads the body
up to the size limit (413 beyond), checks the API key on /v1/ (401), caps the requests in flight (429) and
writes one JSON log line per request. Errors of every kind leave as `{"error": {"message", "type", ...}}`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gensys import __version__
from gensys.serve.config import ENV_API_KEYS, ServeConfig
from gensys.serve.logs import setup_logging
from gensys.serve.state import APIError, ServerState
from gensys.serve.systems import Registry

log = logging.getLogger("gensys.serve")
access = logging.getLogger("gensys.serve.access")

UPLOAD_PATHS = ("/v1/caption",)
OPEN_PATHS = ("/healthz", "/readyz")  # never need a key (load balancers probe them)


def _error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


class Guard:
    """Pure ASGI middleware (streaming-safe): request id, body limit, API keys, in-flight cap, access log."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def _reply(self, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        hdrs = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        st = self.state
        t0 = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        path: str = scope["path"]
        status_box = {"status": 0, "bytes": 0}
        rid_header = (b"x-request-id", rid.encode("latin-1"))

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []), rid_header, (b"x-content-type-options", b"nosniff")
                ]  # fmt: skip
            elif message["type"] == "http.response.body":
                status_box["bytes"] += len(message.get("body", b""))
            await send(message)

        counted = False
        try:
            api = path.startswith("/v1/")
            if api and st.keys:
                auth = headers.get(b"authorization", b"").decode("latin-1")
                token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
                if token not in st.keys:
                    why = "missing API key" if not token else "invalid API key"
                    msg = f"{why}: send `Authorization: Bearer <key>` (keys: serve config or ${ENV_API_KEYS})"
                    await self._reply(
                        send_logged, 401, _error_body(msg, "authentication_error", "invalid_api_key"),
                        [(b"www-authenticate", b"Bearer")],
                    )  # fmt: skip
                    return
            # Read the body now, bounded: a client cannot make the server hold more than the limit.
            limit = st.cfg.limits.max_upload_bytes if path in UPLOAD_PATHS else st.cfg.limits.max_body_bytes
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await self._reply(send_logged, 413, _too_large(limit), [])
                return
            chunks, size = [], 0
            if scope["method"] in ("POST", "PUT", "PATCH"):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        await self._reply(send_logged, 413, _too_large(limit), [])
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
            body = b"".join(chunks)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: wait for the disconnect, as the server would

            if api:
                if st.inflight >= st.cfg.limits.max_inflight:
                    limit = st.cfg.limits.max_inflight
                    msg = f"server busy: {st.inflight} requests in flight (limit {limit}); retry shortly"
                    await self._reply(
                        send_logged,
                        429,
                        _error_body(msg, "rate_limit_error", "server_busy"),
                        [(b"retry-after", b"1")],
                    )
                    return
                st.inflight += 1
                counted = True
            await self.app(scope, replay, send_logged)
        finally:
            if counted:
                st.inflight -= 1
            if path not in OPEN_PATHS and not path.startswith("/static/"):
                access.info(
                    "request",
                    extra={
                        "request_id": rid, "method": scope["method"], "path": path,
                        "status": status_box["status"], "bytes": status_box["bytes"],
                        "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
                    },
                )  # fmt: skip


def _too_large(limit: int) -> bytes:
    return _error_body(
        f"request body is larger than this server's limit of {limit} bytes",
        "invalid_request_error",
        "body_too_large",
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, bool]:
    """(message, first field, is-a-JSON-syntax-error) of a pydantic validation error."""
    parts, param, bad_json = [], None, False
    for err in exc.errors()[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        if err.get("type") == "json_invalid":
            bad_json = True
            ctx = err.get("ctx") or {}
            parts.append(f"body is not valid JSON ({ctx.get('error', 'parse error')})")
            continue
        param = param or where
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param, bad_json


def create_app(
    cfg: ServeConfig | None = None, registry: Registry | None = None, *, own_registry: bool | None = None
) -> FastAPI:
    """The server app; loads every configured system unless a `registry` is given.

    The app closes the registry's batchers at shutdown when it owns it (default: when it loaded it), so
    tests can share one loaded registry between several apps.
    """
    from gensys.serve import api, pages  # routes import the schemas; keep `import gensys.serve` light

    cfg = cfg or ServeConfig()
    setup_logging(cfg.log_level, cfg.log_format)
    if cfg.torch_threads > 0:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    reg = registry if registry is not None else Registry.load(cfg)
    state = ServerState(cfg, reg, own_registry=registry is None if own_registry is None else own_registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        log.info("serving", extra={"mounted": reg.mounted(), "version": __version__})
        yield
        state.close()

    app = FastAPI(
        title="gensys",
        version=__version__,
        description="Five generative-AI systems behind one server: Smart Compose, Translate, Chat "
        '(OpenAI-compatible), Image captioning and RAG. Every error is `{"error": {"message", "type"}}`.',
        lifespan=lifespan,
    )
    app.state.gensys = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param, bad_json = _validation_message(exc)
        status = 400 if bad_json else 422
        return JSONResponse(APIError(status, msg, param=param).body(), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        msg = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            msg = f"no such route: {request.method} {request.url.path} (see /docs)"
        body = APIError(exc.status_code, msg, type_=type_).body()
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        rid = request.scope.get("state", {}).get("request_id")
        log.exception("internal error", extra={"request_id": rid})
        body = APIError(
            500, f"internal error (request id {rid}); see the server log", type_="server_error"
        ).body()
        return JSONResponse(body, status_code=500)

    app.include_router(api.router)
    app.include_router(pages.router)
    pages.mount_static(app)
    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(Guard, state=state)
    _document_errors(app)
    return app


def _document_errors(app: FastAPI) -> None:
    """Describe the error responses in the OpenAPI spec (our body shape replaces FastAPI's 422 schema)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        for path, ops in schema.get("paths", {}).items():
            for op in ops.values():
                responses = op.setdefault("responses", {})
                ref = {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                    }
                }
                if "422" in responses:
                    responses["422"] = {"description": "Invalid request", **ref}
                if path.startswith("/v1/"):
                    for code, text in (
                        ("400", "Bad request"), ("401", "Missing or invalid API key"),
                        ("413", "Body too large"),
                        ("429", "Server busy"), ("503", "System not available"), ("504", "Timed out"),
                    ):  # fmt: skip
                        responses.setdefault(code, {"description": text, **ref})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["Guard", "create_app"]
