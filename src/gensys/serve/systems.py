"""Which systems are served: load each system's predictor from its checkpoint, or record why not.

Each system's package is imported only here and only when its checkpoint is configured
(`gensys.apps.<system>.predictor.load_predictor`), so a server without, say, the caption system installed or
trained still serves the other four; requests to a missing system get a 503 whose message says how to make
its checkpoint. `System.call(...)` runs the predictor through the system's `DynamicBatcher`.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gensys.errors import GensysError
from gensys.serve import adapters
from gensys.serve.batching import DynamicBatcher
from gensys.serve.config import SYSTEMS, ServeConfig

log = logging.getLogger("gensys.serve")

# The command that makes each system's shipped checkpoint (printed by `gensys demo` and in 503 messages);
# each demo config writes (exports) its result to models/<system>.
TRAIN_COMMANDS: dict[str, list[str]] = {
    "compose": ["gensys compose train --config configs/compose/demo.yaml"],
    "translate": ["gensys translate train --config configs/translate/demo.yaml"],
    "chat": [
        "gensys chat train --config configs/chat/demo.yaml",  # policy/ and reward/
        "gensys chat train --config configs/chat/safety.yaml stage=safety",  # safety/
    ],
    "caption": ["gensys caption train --config configs/caption/demo.yaml --export models/caption"],
    "rag": ["gensys rag index --config configs/rag/demo.yaml"],
}
# What a command needs beyond the repo (shown next to it).
TRAIN_NOTES: dict[str, str] = {
    "caption": "needs the Flickr8k images: add --data-dir DIR or set $GENSYS_DATA",
    "rag": "generative answers use the chat checkpoint; without it answers are extractive",
}

DESCRIPTIONS = {
    "compose": "Smart Compose: ghost-text suggestions while you type",
    "translate": "Translate sentences (seq2seq, beam search)",
    "chat": "Chat assistant (OpenAI-compatible /v1/chat/completions)",
    "caption": "Image captioning with n-best scores",
    "rag": "Questions answered from documents, with citations",
}


@dataclass
class System:
    """One system: its predictor and batcher when mounted, else the reason it is not."""

    name: str
    ckpt: Path | None
    predictor: Any = None
    error: str | None = None
    batcher: DynamicBatcher | None = None
    load_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def mounted(self) -> bool:
        return self.predictor is not None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "system": self.name,
            "mounted": self.mounted,
            "description": DESCRIPTIONS[self.name],
        }
        out["checkpoint"] = str(self.ckpt) if self.ckpt else None
        if self.mounted:
            out.update(self.info)
        else:
            out["reason"] = self.error
        return out


def _unavailable(name: str, ckpt: Path | None, why: str) -> str:
    note = f" ({TRAIN_NOTES[name]})" if name in TRAIN_NOTES else ""
    how = "make it with " + " then ".join(f"`{c}`" for c in TRAIN_COMMANDS[name]) + note
    if ckpt is None:
        return f"the {name} system is switched off (models.{name} is empty in the serve config)"
    return f"the {name} system is not available: {why}; {how} or set models.{name} to a checkpoint directory"


def _import_loader(name: str) -> Callable[..., Any] | None:
    module = f"gensys.apps.{name}.predictor"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):  # the predictor module itself is missing
            return None
        raise
    return getattr(mod, "load_predictor", None)


def load_system(name: str, cfg: ServeConfig) -> System:
    """Load one system's predictor (never raises for a user error: the reason is kept for the 503)."""
    ckpt = cfg.checkpoint(name)
    sys_ = System(name, ckpt)
    if ckpt is None:
        sys_.error = _unavailable(name, None, "")
        return sys_
    if not ckpt.is_dir():
        sys_.error = _unavailable(name, ckpt, f"no checkpoint at {ckpt}")
        return sys_
    t0 = time.perf_counter()
    try:
        loader = _import_loader(name)
        opts = dict(cfg.predictor_options.get(name, {}))
        predictor = adapters.load(name, loader, ckpt, opts)
    except (GensysError, OSError, ValueError) as e:
        sys_.error = _unavailable(
            name, ckpt, f"loading {ckpt} failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        )
        log.warning("system not mounted", extra={"system": name, "reason": sys_.error})
        return sys_
    if predictor is None:
        sys_.error = _unavailable(name, ckpt, f"gensys.apps.{name}.predictor is not built in this install")
        return sys_
    sys_.predictor = predictor
    sys_.load_s = time.perf_counter() - t0
    sys_.info = adapters.info(name, predictor)
    b = cfg.batching
    batch_fn, key = adapters.batch_fn(name, predictor)
    max_batch = b.max_batch if b.enabled and adapters.batchable(name, predictor) else 1
    sys_.batcher = DynamicBatcher(
        name,
        batch_fn,
        max_batch=max_batch,
        window_s=b.window_ms / 1000.0 if b.enabled else 0.0,
        max_queue=cfg.limits.max_queue,
        key=key,
        retryable=lambda item: not (isinstance(item, dict) and item.get("streamed")),
    )
    return sys_


class Registry:
    """All five systems, mounted or not."""

    def __init__(self, systems: dict[str, System]) -> None:
        self.systems = systems

    @classmethod
    def load(cls, cfg: ServeConfig, only: list[str] | None = None) -> Registry:
        """Load every configured system (or those in `only`)."""
        out = {}
        for name in SYSTEMS:
            if only is not None and name not in only:
                out[name] = System(name, None, error=_unavailable(name, None, ""))
                continue
            out[name] = load_system(name, cfg)
        return cls(out)

    def __getitem__(self, name: str) -> System:
        return self.systems[name]

    def mounted(self) -> list[str]:
        return [n for n, s in self.systems.items() if s.mounted]

    def close(self) -> None:
        for s in self.systems.values():
            if s.batcher is not None:
                s.batcher.close()


__all__ = ["DESCRIPTIONS", "TRAIN_COMMANDS", "TRAIN_NOTES", "Registry", "System", "load_system"]
