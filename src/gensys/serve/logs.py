"""Structured logs: one JSON object per line on stderr (`log_format: json`), or plain text.

    {"ts": "2025-01-01T12:00:00.123Z", "level": "info", "logger": "gensys.serve.access", "msg": "request",
     "request_id": "9f1c...", "method": "POST", "path": "/v1/translate", "status": 200, "latency_ms": 41.2}

Fields passed with `extra={...}` become top-level keys. uvicorn's own loggers go through the same handler
(its access log is off: `gensys.serve.access` writes one line per request with the request id).
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with its `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out = {"ts": ts, "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}
        tail = " ".join(f"{k}={v}" for k, v in extra.items())
        line = f"{record.levelname.lower():7s} {record.name}: {record.getMessage()} {tail}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_HANDLER_NAME = "gensys-serve"


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """Route gensys.serve and uvicorn logs to stderr in `fmt`; idempotent (safe to call per app)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name in ("gensys.serve", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if h.get_name() != _HANDLER_NAME]
        if name != "uvicorn.error":  # it propagates to "uvicorn"
            logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = name == "uvicorn.error"
    logging.getLogger("uvicorn.access").disabled = True


__all__ = ["JsonFormatter", "TextFormatter", "setup_logging"]
