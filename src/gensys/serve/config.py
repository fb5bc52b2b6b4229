"""`ServeConfig`: everything `gensys serve` reads, as one typed dataclass (YAML: configs/serve/default.yaml).

    cfg = load_serve_config("configs/serve/default.yaml", ["port=9000", "models.chat=runs/chat/sft"])

A system is served when its checkpoint path is set and exists; an empty path turns it off. Relative paths
resolve against the working directory first and then the repository root, so `gensys serve` finds the
shipped `models/<system>/` from any folder of a source checkout. API keys come from `api_keys` plus the
comma-separated env variable `GENSYS_API_KEYS`; `GENSYS_EVENTS_DB` overrides `events_db`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gensys.config import load_config

SYSTEMS = ("compose", "translate", "chat", "caption", "rag")
ENV_API_KEYS = "GENSYS_API_KEYS"
ENV_EVENTS_DB = "GENSYS_EVENTS_DB"


@dataclass
class ModelPaths:
    """Checkpoint directory per system; "" = not served."""

    compose: str = "models/compose"
    translate: str = "models/translate"
    chat: str = "models/chat"
    caption: str = "models/caption"
    rag: str = "models/rag"


@dataclass
class Limits:
    """Request limits. Anything beyond them is refused with a 4xx, never queued without bound."""

    max_body_bytes: int = 1_000_000  # JSON bodies
    max_upload_bytes: int = 8_000_000  # multipart image uploads (/v1/caption)
    max_image_pixels: int = 16_000_000  # refuses decompression bombs before decoding the pixels
    image_types: list[str] = field(
        default_factory=lambda: ["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"]
    )
    max_images: int = 8  # per /v1/caption request
    max_tokens: int = 256  # cap on max_tokens of chat / completions
    default_max_tokens: int = 128  # when a request does not say
    max_n: int = 4  # choices per chat / completions request
    max_prompt_chars: int = 16_000  # per message, prompt, text or question
    max_messages: int = 64
    max_texts: int = 32  # texts per /v1/translate request
    max_beam: int = 8
    request_timeout_s: float = 60.0  # waiting + compute; 504 after this
    max_inflight: int = 64  # requests in the server at once; more -> 429
    max_queue: int = 32  # requests waiting per model; more -> 429

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_upload_bytes", "max_image_pixels", "max_tokens", "max_inflight"):
            if getattr(self, name) < 1:
                raise ValueError(f"limits.{name} must be >= 1")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("limits.default_max_tokens must be <= limits.max_tokens")


@dataclass
class Batching:
    """Dynamic batching per model: a worker waits up to `window_ms` for more requests to join a batch."""

    enabled: bool = True
    window_ms: float = 5.0
    max_batch: int = 16

    def __post_init__(self) -> None:
        if self.window_ms < 0 or self.max_batch < 1:
            raise ValueError("batching.window_ms must be >= 0 and batching.max_batch >= 1")


@dataclass
class ServeConfig:
    """Settings of `gensys serve`."""

    host: str = "127.0.0.1"
    port: int = 8000
    models: ModelPaths = field(default_factory=ModelPaths)
    # extra keyword arguments for each system's `load_predictor(ckpt_dir, **opts)`
    predictor_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    batching: Batching = field(default_factory=Batching)
    api_keys: list[str] = field(default_factory=list)  # empty = no authentication
    cors_origins: list[str] = field(default_factory=list)  # empty = CORS off
    events_db: str = "gensys_events.sqlite"  # "" = no event log
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    torch_threads: int = 0  # 0 = torch's default

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        unknown = set(self.predictor_options) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"predictor_options: unknown system(s) {sorted(unknown)}; known: {SYSTEMS}")

    def checkpoint(self, system: str) -> Path | None:
        """Resolved checkpoint directory of `system`, or None when it is switched off."""
        raw = getattr(self.models, system)
        if not raw:
            return None
        return resolve_path(raw)

    def keys(self) -> list[str]:
        """API keys from the config plus $GENSYS_API_KEYS (comma-separated)."""
        env = [k.strip() for k in os.environ.get(ENV_API_KEYS, "").split(",") if k.strip()]
        return [k for k in self.api_keys if k] + env

    def events_path(self) -> str | None:
        """Event-log SQLite path ($GENSYS_EVENTS_DB wins), or None when logging is off."""
        path = os.environ.get(ENV_EVENTS_DB, self.events_db)
        return path or None


def repo_root() -> Path:
    """The source checkout this package lives in (src/gensys/serve/config.py -> <repo>)."""
    return Path(__file__).resolve().parents[3]


def resolve_path(raw: str | os.PathLike) -> Path:
    """An absolute path: as given, else relative to the working directory, else to the repository root."""
    p = Path(raw).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    in_repo = repo_root() / p
    return in_repo if in_repo.exists() else p.resolve()


def load_serve_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> ServeConfig:
    """Load `ServeConfig` from YAML (None = defaults) with `key.sub=value` overrides."""
    return load_config(ServeConfig, path, overrides)


__all__ = [
    "SYSTEMS",
    "Batching",
    "Limits",
    "ModelPaths",
    "ServeConfig",
    "load_serve_config",
    "repo_root",
    "resolve_path",
]
