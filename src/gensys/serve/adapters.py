"""The only place that knows each predictor's exact API: load it, and turn a batch of requests into calls.

The contract (CONTRIBUTING.md, "Systems and how the server reaches them"):
  compose    suggest_batch([{"text", "subject", "previous", "cursor"}]) -> [{"suggestion", "confidence",
             "triggered", "reason", "latency_ms"}]
  translate  translate(texts, *, beam) -> [{"translation", "score"}]
  caption    caption(images, *, beam, n_best) -> [[{"caption", "score"}]]
  rag        ask(question, *, user, groups, mode, k) -> {"answer", "citations", "retrieved"}
  chat       complete(messages, *, user, session_id, params, stream) -> reply | iterator of deltas + reply;
             complete_batch([{"messages", "user", "session_id", "params", "emit"}]) -> [reply | Exception]
Where a predictor differs from it, the difference is bridged here and nowhere else.

Batch functions take the request items the handlers queued and return one result per item. Items of one
batch share a key (decoding settings), so one predictor call can serve them all.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gensys.serve.lm_chat import LMChat, gen_params_key

BatchFn = Callable[[list[Any]], list[Any]]


@dataclass
class ChatBackend:
    """The chat system: a pipeline with `complete(...)` and the LM that serves `/v1/completions`."""

    pipeline: Any
    lm: LMChat | None

    @property
    def kind(self) -> str:
        return "lm" if isinstance(self.pipeline, LMChat) else "pipeline"


def load(name: str, loader: Callable[..., Any] | None, ckpt: Path, opts: dict[str, Any]) -> Any:
    """The predictor of `name` loaded from `ckpt`, or None when its package has no predictor yet."""
    if name == "chat":
        if loader is None:  # no chat pipeline in this install: serve the policy as a plain LM
            # `gensys chat train` exports models/chat/{policy,reward}; a bare LM checkpoint works too
            policy = ckpt / "policy" if not (ckpt / "config.json").is_file() else ckpt
            lm = LMChat.load(policy if (policy / "config.json").is_file() else ckpt)
            return ChatBackend(lm, lm)
        pipeline = loader(ckpt, **opts)
        return ChatBackend(pipeline, _pipeline_lm(pipeline))
    if loader is None:
        return None
    return loader(ckpt, **opts)


def _pipeline_lm(pipeline: Any) -> LMChat | None:
    """A raw-text LM for /v1/completions on the pipeline's own policy model (`ChatPipeline.policy` and
    `.tok`); its completions still pass the pipeline's safety classifier (`_safe_text_batch`)."""
    model = _attr(pipeline, "policy", "model")
    tok = _attr(pipeline, "tok", "tokenizer")
    if model is None or tok is None or not hasattr(model, "new_cache"):
        return None
    return LMChat(model, tok)


def _attr(obj: Any, *names: str) -> Any:
    """The first of `obj`'s attributes `names` that is set."""
    return next((v for v in (getattr(obj, n, None) for n in names) if v is not None), None)


def info(name: str, predictor: Any) -> dict[str, Any]:
    """Facts shown by /v1/models and the pages (language pair, chat backend)."""
    if name == "translate":
        return {k: getattr(predictor, k) for k in ("src_lang", "tgt_lang") if getattr(predictor, k, None)}
    if name == "chat":
        out = {"backend": predictor.kind, "completions": predictor.lm is not None}
        if predictor.kind == "pipeline":
            out["safety_filter"] = getattr(predictor.pipeline, "safety", None) is not None
            out["sessions"] = hasattr(predictor.pipeline, "list_sessions")
        return out
    return {}


def batchable(name: str, predictor: Any) -> bool:
    """Whether one predictor call can serve several requests."""
    return name != "rag"  # ask() takes one question


def batch_fn(name: str, predictor: Any) -> tuple[BatchFn, Callable[[Any], Hashable]]:
    """(function over a batch of request items, batch key of an item) for `name`."""
    if name == "compose":
        return predictor.suggest_batch, lambda item: None
    if name == "translate":
        return _translate_fn(predictor), lambda item: item["beam"]
    if name == "caption":
        return _caption_fn(predictor), lambda item: (item["beam"], item["n_best"])
    if name == "rag":

        def ask(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                predictor.ask(i["question"], user=i["user"], groups=i["groups"], mode=i["mode"], k=i["k"])
                for i in items
            ]

        return ask, lambda item: None
    if name == "chat":
        # chat conversations and raw-text completions never share a call; both batch on decoding settings
        return _chat_fn(predictor), lambda item: (item["kind"], gen_params_key(item["params"]))
    raise KeyError(name)


def _translate_fn(predictor: Any) -> BatchFn:
    def run(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        texts = [t for i in items for t in i["texts"]]
        flat = predictor.translate(texts, beam=items[0]["beam"])
        out, at = [], 0
        for i in items:
            out.append(flat[at : at + len(i["texts"])])
            at += len(i["texts"])
        return out

    return run


def _caption_fn(predictor: Any) -> BatchFn:
    def run(items: list[dict[str, Any]]) -> list[list[list[dict[str, Any]]]]:
        images = [im for i in items for im in i["images"]]
        flat = predictor.caption(images, beam=items[0]["beam"], n_best=items[0]["n_best"])
        out, at = [], 0
        for i in items:
            out.append(flat[at : at + len(i["images"])])
            at += len(i["images"])
        return out

    return run


def _safe_text_batch(lm: LMChat, safety: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Raw-text completions under the chat pipeline's safety classifier: an unsafe prompt is refused before
    decoding, an unsafe continuation is replaced by a refusal. Text is checked whole, so a streamed
    completion arrives as one delta (as the pipeline does for best-of-n)."""
    from gensys.apps.chat.rejection import rejection_text

    out: list[dict[str, Any] | None] = [None] * len(items)
    verdicts = safety.check([it["prompt"] for it in items])
    todo = []
    for i, (it, v) in enumerate(zip(items, verdicts)):
        if v.unsafe:
            out[i] = _refusal(rejection_text(v.flagged, "input"), v.flagged, "input", lm, it["prompt"])
        else:
            todo.append(i)
    if todo:
        replies = lm.complete_text_batch([{**items[i], "emit": None} for i in todo])
        for i, rep, v in zip(todo, replies, safety.check([r["text"] for r in replies])):
            out[i] = (
                rep
                if not v.unsafe
                else _refusal(
                    rejection_text(v.flagged, "output"), v.flagged, "output", lm, items[i]["prompt"]
                )
            )
    for it, rep in zip(items, out):
        assert rep is not None
        rep.setdefault("refused", False)
        if it.get("emit") is not None and rep["text"]:
            it["emit"](rep["text"])
    return out  # type: ignore[return-value]


def _refusal(text: str, flagged: list[str], stage: str, lm: LMChat, prompt: str) -> dict[str, Any]:
    p, c = len(lm.tok.encode(prompt)), len(lm.tok.encode(text))
    usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    return {"text": text, "finish_reason": "content_filter", "usage": usage, "refused": True,
            "flagged": list(flagged), "refusal_stage": stage}  # fmt: skip


def _chat_fn(backend: ChatBackend) -> BatchFn:
    def run(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if items[0]["kind"] == "text":
            if backend.lm is None:
                raise RuntimeError("this chat checkpoint serves no raw-text completions")
            safety = getattr(backend.pipeline, "safety", None) if backend.kind == "pipeline" else None
            if safety is not None:
                return _safe_text_batch(backend.lm, safety, items)
            return backend.lm.complete_text_batch(items)
        # one call for the batch; a request's failure comes back as its Exception, the others go on
        return backend.pipeline.complete_batch(items)

    return run


__all__ = ["ChatBackend", "batch_fn", "batchable", "info", "load"]
