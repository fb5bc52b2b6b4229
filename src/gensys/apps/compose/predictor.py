"""The Smart Compose predictor: triggering -> phrase generator -> post-processing -> output.

    p = load_predictor("models/compose")
    p.suggest("Thanks for the update. Please let me ", subject="Q3 budget")
    # {"suggestion": "know if you have any questions.", "confidence": 0.71, "triggered": True,
    #  "reason": "ok", "latency_ms": 21.4, "debounce_ms": 80}

`suggest_batch` takes a list of requests (so the server can batch); a request with a "draft_id" keeps the KV
cache of that draft between keystrokes, so each call runs the model only on what changed. The same pipeline
runs over the n-gram baseline (`NgramBackend`), which is how `eval` compares the two with one harness.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from gensys.apps.compose.config import SuggestConfig
from gensys.apps.compose.generator import Candidate, PromptItem, TransformerBackend
from gensys.apps.compose.memory import load_memory
from gensys.apps.compose.postprocess import finish_candidate
from gensys.apps.compose.triggering import ComposeInputError, Decision, decide, parse_request
from gensys.checkpoint import load_checkpoint
from gensys.errors import CheckpointError

CALIBRATION_FILE = "calibration.json"


class Backend(Protocol):
    """Anything that proposes n-best continuations for triggered requests (transformer or n-gram)."""

    name: str

    def propose(
        self, items: list[PromptItem], deadline: float | None = None
    ) -> list[list[Candidate] | None]: ...


@dataclass(frozen=True)
class Outcome:
    """A request's result before the confidence threshold: the best surviving candidate, if any."""

    suggestion: str  # "" when there is none
    confidence: float  # 0.0 when there is none
    reason: str  # "ok" or why there is no suggestion (trigger rule, filter, budget)
    latency_ms: float


class ComposePredictor:
    """Runs the pipeline for lists of requests; see the module docstring."""

    def __init__(self, backend: Backend, cfg: SuggestConfig, min_confidence: float | None = None) -> None:
        self.backend = backend
        self.cfg = cfg
        self.min_confidence = cfg.min_confidence if min_confidence is None else min_confidence

    # ---- the pipeline without the threshold (what eval sweeps) ------------------------------------------
    def outcomes(self, requests: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        """Trigger, generate and post-process every request; no confidence threshold applied.

        Bad requests raise `ComposeInputError` (with `http_status`) before any work is done.
        """
        t0 = time.perf_counter()
        reqs = [parse_request(r, self.cfg) for r in requests]
        decisions: list[Decision] = [decide(r, self.cfg) for r in reqs]
        todo = [i for i, d in enumerate(decisions) if d.trigger]
        items = [
            PromptItem(
                reqs[i].subject, reqs[i].previous, decisions[i].prefix, decisions[i].tail, reqs[i].draft_id
            )
            for i in todo
        ]
        budget = self.cfg.latency_budget_ms
        deadline = t0 + budget / 1000.0 if budget > 0 else None
        proposals = self.backend.propose(items, deadline) if items else []
        results: list[tuple[str, float, str]] = [("", 0.0, d.reason) for d in decisions]
        for i, cands in zip(todo, proposals):
            results[i] = self._choose(decisions[i], cands)
        ms = (time.perf_counter() - t0) * 1000.0
        return [Outcome(s, c, why, ms) for s, c, why in results]

    def _choose(self, d: Decision, cands: list[Candidate] | None) -> tuple[str, float, str]:
        """The best candidate that survives post-processing (the n-best list is the fallback)."""
        if cands is None:
            return "", 0.0, "over_budget"
        first_reason = "no_candidate"
        for k, c in enumerate(cands):
            fin = finish_candidate(
                c.text,
                prefix=d.prefix,
                tail=d.tail,
                partial=d.partial,
                ended=c.ended,
                max_words=self.cfg.max_words,
                long_policy=self.cfg.long_policy,
                block_gendered=self.cfg.block_gendered,
            )
            if fin.text is not None:
                return fin.text, c.confidence, "ok"
            if k == 0:
                first_reason = fin.reason
        return "", 0.0, first_reason

    # ---- the public API ----------------------------------------------------------------------------------
    def suggest_batch(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """[{"text", "subject"?, "previous"?, "cursor"?, "draft_id"?}] -> [{"suggestion", "confidence",
        "triggered", "reason", "latency_ms", "debounce_ms"}]; a suggestion below the confidence threshold is
        withheld with reason "low_confidence"."""
        if isinstance(requests, Mapping) or not isinstance(requests, Sequence):
            raise ComposeInputError("suggest_batch takes a list of request objects")
        out = []
        for o in self.outcomes(requests):
            shown = o.reason == "ok" and o.confidence >= self.min_confidence
            reason = o.reason if o.reason != "ok" or shown else "low_confidence"
            out.append(
                {
                    "suggestion": o.suggestion if shown else "",
                    "confidence": round(o.confidence, 4),
                    "triggered": shown,
                    "reason": reason,
                    "latency_ms": round(o.latency_ms, 2),
                    "debounce_ms": self.cfg.debounce_ms,
                }
            )
        return out

    def suggest(
        self,
        text: str,
        subject: str = "",
        previous: str = "",
        cursor: int | None = None,
        draft_id: str | None = None,
    ) -> dict[str, Any]:
        """One request; see `suggest_batch`."""
        req: dict[str, Any] = {"text": text, "subject": subject, "previous": previous, "cursor": cursor}
        if draft_id is not None:
            req["draft_id"] = draft_id
        return self.suggest_batch([req])[0]

    def end_draft(self, draft_id: str) -> None:
        """Forget a draft's cache (the email was sent or discarded)."""
        sessions = getattr(self.backend, "sessions", None)
        if sessions is not None:
            sessions.drop(draft_id)


def suggest_config_from(saved: Mapping[str, Any] | None, **opts: Any) -> SuggestConfig:
    """A SuggestConfig from a checkpoint's saved settings, with keyword overrides (unknown keys: error)."""
    names = {f.name for f in fields(SuggestConfig)}
    base = {k: v for k, v in (saved or {}).items() if k in names}
    unknown = set(opts) - names - {"min_confidence"}
    if unknown:
        raise TypeError(f"unknown predictor option(s): {', '.join(sorted(unknown))}; known: {sorted(names)}")
    merged = {**base, **opts}
    return SuggestConfig(**merged)


def read_calibration(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """`calibration.json` of a checkpoint ({"min_confidence", "target_trigger_rate", ...}) or None."""
    path = Path(ckpt_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def load_predictor(ckpt_dir: str | Path = "models/compose", **opts: Any) -> ComposePredictor:
    """The predictor of a compose checkpoint; `opts` override SuggestConfig fields (e.g. num_beams=2).

    The confidence threshold comes from `opts["min_confidence"]`, else the checkpoint's calibration.json
    (written by `train`/`eval` for the target trigger rate), else the config's default.
    """
    model, config, tok = load_checkpoint(ckpt_dir)
    if tok is None:
        raise CheckpointError(f"{ckpt_dir} has no tokenizer.json")
    compose = config.get("compose") or {}
    cfg = suggest_config_from(
        compose.get("suggest"), **{k: v for k, v in opts.items() if k != "min_confidence"}
    )
    data = compose.get("data") or {}
    backend = TransformerBackend(
        model,  # type: ignore[arg-type]
        tok,
        num_beams=cfg.num_beams,
        max_new_tokens=cfg.max_new_tokens,
        max_context_tokens=cfg.max_context_tokens,
        subject_max_tokens=int(data.get("subject_max_tokens", 24)),
        previous_max_tokens=int(data.get("previous_max_tokens", 64)),
        session_cache_size=cfg.session_cache_size,
        max_beam_rows=cfg.max_beam_rows,
        min_beams=cfg.min_beams,
        stop_after_words=cfg.max_words if cfg.stop_at_max_words else 0,
        memory=load_memory(ckpt_dir) if cfg.use_memory else None,
    )
    threshold = opts.get("min_confidence")
    if threshold is None:
        calib = read_calibration(ckpt_dir)
        if calib is not None:
            threshold = float(calib["min_confidence"])
    return ComposePredictor(backend, cfg, threshold)


__all__ = [
    "Backend",
    "CALIBRATION_FILE",
    "ComposePredictor",
    "Outcome",
    "asdict",
    "load_predictor",
    "read_calibration",
    "suggest_config_from",
]
