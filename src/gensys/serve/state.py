"""Server state shared by the handlers: config, systems, event log, and the call-a-predictor helper."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gensys.errors import GensysError
from gensys.serve.batching import BatcherClosed, QueueFull
from gensys.serve.config import ServeConfig
from gensys.serve.systems import Registry, System

log = logging.getLogger("gensys.serve")


class APIError(Exception):
    """An error answered to the client as `{"error": {...}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def map_error(e: BaseException, system: str) -> APIError:
    """The client-facing error for an exception raised while serving `system`."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, QueueFull):
        return APIError(
            429, str(e), type_="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}
        )
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return APIError(
            504, f"the {system} model did not answer in time", type_="timeout_error", code="timeout"
        )
    if isinstance(e, BatcherClosed):
        return APIError(503, str(e), type_="unavailable_error", code="shutting_down")
    if isinstance(e, GensysError):  # the predictor refused this input (it may say which 4xx)
        status = getattr(e, "http_status", 400)
        status = status if isinstance(status, int) and 400 <= status < 500 else 400
        return APIError(status, f"{system}: {e}", code="invalid_input")
    raise e  # a bug: the app's 500 handler logs it


class ServerState:
    """What handlers need; one per app."""

    def __init__(self, cfg: ServeConfig, registry: Registry, own_registry: bool = True) -> None:
        self.cfg = cfg
        self.registry = registry
        self.own_registry = own_registry
        self.keys = frozenset(cfg.keys())
        self.inflight = 0
        self.events = None
        path = cfg.events_path()
        if path:
            from gensys.metrics.events import EventLog

            self.events = EventLog(path)

    def system(self, name: str) -> System:
        """The mounted system `name`, else a 503 that says how to make it available."""
        s = self.registry[name]
        if not s.mounted:
            raise APIError(
                503,
                s.error or f"{name} is not available",
                type_="unavailable_error",
                code="system_unavailable",
            )
        return s

    async def call(self, system: System, item: Any) -> Any:
        """Run one request item through the system's batcher, mapping failures to API errors."""
        assert system.batcher is not None
        try:
            return await system.batcher.submit(item, timeout=self.cfg.limits.request_timeout_s)
        except Exception as e:  # noqa: BLE001 - mapped (or re-raised as a bug) below
            raise map_error(e, system.name) from None

    def log_event(self, system: str, event: str, **kw: Any) -> None:
        """Append to the event log (if configured); logging must never fail a request."""
        if self.events is None:
            return
        try:
            self.events.log(system, event, **kw)
        except Exception:  # noqa: BLE001 - e.g. disk full: keep serving, say so in the log
            log.exception("event log write failed", extra={"system": system, "event": event})

    def close(self) -> None:
        if self.own_registry:
            self.registry.close()
        if self.events is not None:
            self.events.close()


__all__ = ["APIError", "ServerState", "map_error"]
