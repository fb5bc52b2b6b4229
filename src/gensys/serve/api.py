"""The /v1 API: each handler checks limits, calls one predictor through its batcher, shapes the response.

No model logic lives here: decoding settings go to the predictor as given; the handler only checks them
against the server's caps and turns the predictor's dicts into response schemas (and OpenAI's shapes).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from gensys.errors import DataError
from gensys.serve import schemas as S
from gensys.serve.batching import StreamChannel
from gensys.serve.config import SYSTEMS
from gensys.serve.state import APIError, ServerState, map_error

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {"default": {"model": S.ErrorResponse, "description": "Error"}}
CHAT_MODEL_IDS = ("chat", "gensys-chat")


def _state(request: Request) -> ServerState:
    return request.app.state.gensys


def _rid(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex[:16]


def _check_len(value: str, name: str, limit: int) -> None:
    if len(value) > limit:
        raise APIError(400, f"{name} has {len(value)} characters; this server's limit is {limit}", param=name)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 2)


# ------------------------------------------------------------------------------------------- health
@router.get("/healthz", response_model=S.Health, tags=["health"])
async def healthz() -> S.Health:
    """The process is up."""
    return S.Health(status="ok")


@router.get("/readyz", response_model=S.Ready, responses={503: {"model": S.Ready}}, tags=["health"])
async def readyz(request: Request) -> Any:
    """Ready to take requests: systems loaded and the server not saturated (else 503)."""
    st = _state(request)
    systems = {n: s.describe() for n, s in st.registry.systems.items()}
    for n, s in st.registry.systems.items():
        if s.batcher is not None:
            b = s.batcher
            stats = {"queued": b.queued, "batches": b.batches, "requests": b.items}
            systems[n]["batching"] = {**stats, "largest_batch": b.max_seen_batch}
    ready = st.inflight < st.cfg.limits.max_inflight
    body = S.Ready(ready=ready, systems=systems, inflight=st.inflight)
    if not ready:
        return JSONResponse(body.model_dump(), status_code=503)
    return body


@router.get("/v1/models", response_model=S.ModelList, responses=ERRORS, tags=["openai"])
async def models(request: Request) -> S.ModelList:
    """Mounted systems as OpenAI model cards (`chat` is the one chat/completions model)."""
    st = _state(request)
    cards = []
    for name in SYSTEMS:
        s = st.registry[name]
        if s.mounted:
            created = int(s.ckpt.stat().st_mtime) if s.ckpt is not None else 0
            cards.append(S.ModelCard(id=name, created=created, system=name, **s.info))
    return S.ModelList(data=cards)


# ------------------------------------------------------------------------------------------ compose
@router.post("/v1/compose/suggest", response_model=S.SuggestResponse, responses=ERRORS, tags=["compose"])
async def compose_suggest(req: S.SuggestRequest, request: Request) -> S.SuggestResponse:
    """A Smart Compose suggestion for the text typed so far (empty when the model is not confident)."""
    st, rid, t0 = _state(request), _rid(request), time.perf_counter()
    lim = st.cfg.limits.max_prompt_chars
    for name in ("text", "subject", "previous"):
        _check_len(getattr(req, name), name, lim)
    cursor = len(req.text) if req.cursor is None else req.cursor
    if cursor > len(req.text):
        raise APIError(
            400, f"cursor {cursor} is past the end of text ({len(req.text)} characters)", param="cursor"
        )
    system = st.system("compose")
    item = {"text": req.text, "subject": req.subject, "previous": req.previous, "cursor": cursor}
    if req.draft_id is not None:
        item["draft_id"] = req.draft_id
    res = await st.call(system, item)
    latency = _ms(t0)
    kw = dict(user=req.user, session=req.session_id, request_id=rid, latency_ms=latency)
    st.log_event("compose", "request", **kw)
    if res.get("triggered") and res.get("suggestion"):
        st.log_event("compose", "impression", meta={"chars": len(res["suggestion"])}, **kw)
    return S.SuggestResponse(
        suggestion=res.get("suggestion") or "",
        confidence=float(res.get("confidence") or 0.0),
        triggered=bool(res.get("triggered")),
        reason=str(res.get("reason") or ""),
        latency_ms=float(res.get("latency_ms") or latency),
        debounce_ms=res.get("debounce_ms"),
        request_id=rid,
    )


# ---------------------------------------------------------------------------------------- translate
@router.post("/v1/translate", response_model=S.TranslateResponse, responses=ERRORS, tags=["translate"])
async def translate(req: S.TranslateRequest, request: Request) -> S.TranslateResponse:
    """Translate one text or a list of texts (beam search; beam=1 is greedy)."""
    st, rid, t0 = _state(request), _rid(request), time.perf_counter()
    lim = st.cfg.limits
    texts = req.all_texts()
    if len(texts) > lim.max_texts:
        raise APIError(
            400,
            f"{len(texts)} texts; this server translates at most {lim.max_texts} per request",
            param="texts",
        )
    for i, t in enumerate(texts):
        _check_len(t, f"texts[{i}]", lim.max_prompt_chars)
    if req.beam > lim.max_beam:
        raise APIError(400, f"beam {req.beam} is above this server's cap of {lim.max_beam}", param="beam")
    system = st.system("translate")
    res = await st.call(system, {"texts": texts, "beam": req.beam})
    latency = _ms(t0)
    kw = dict(session=req.session_id, request_id=rid, latency_ms=latency)
    st.log_event("translate", "request", **kw)
    st.log_event("translate", "impression", **kw)
    out = [S.Translation(translation=r["translation"], score=float(r["score"])) for r in res]
    return S.TranslateResponse(
        translations=out,
        src_lang=system.info.get("src_lang"),
        tgt_lang=system.info.get("tgt_lang"),
        request_id=rid,
    )


# ------------------------------------------------------------------------------------------ caption
def _decode_images(blobs: list[tuple[str, str, bytes]], st: ServerState) -> list[Any]:
    """Validated RGB images (type, size, pixel count checked before the pixels are decoded)."""
    from PIL import Image

    from gensys.data.readers import decode_image

    lim = st.cfg.limits
    accepted = ", ".join(lim.image_types)
    images = []
    for name, ctype, data in blobs:
        # the declared type must be an accepted one (or unknown); the file's real format is checked below
        if ctype not in (*lim.image_types, "", "application/octet-stream"):
            msg = f"{name}: type {ctype} is not accepted; send one of {accepted}"
            raise APIError(415, msg, param="images")
        if not data:
            raise APIError(400, f"{name}: the file is empty", param="images")
        try:  # the header alone gives format and size: refuse huge images before decoding them
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
                real = Image.MIME.get(probe.format or "", "")
        except Image.DecompressionBombError:
            w, h, real = lim.max_image_pixels + 1, 1, ctype
        except Exception:  # noqa: BLE001 - any unreadable header is the client's file
            raise APIError(400, f"{name}: not a readable image", param="images") from None
        if real not in lim.image_types:
            msg = f"{name}: the file is {real or 'an unsupported format'}; send one of {accepted}"
            raise APIError(415, msg, param="images")
        if w * h > lim.max_image_pixels:
            raise APIError(
                413,
                f"{name}: image is {w}x{h} = {w * h} pixels; the limit is {lim.max_image_pixels}",
                param="images",
            )
        try:
            images.append(decode_image(data, name, max_pixels=lim.max_image_pixels))
        except DataError as e:
            raise APIError(400, str(e), param="images") from None
    return images


@router.post("/v1/caption", response_model=S.CaptionResponse, responses=ERRORS, tags=["caption"])
async def caption(
    request: Request,
    images: Annotated[list[UploadFile], File(description="one or more images (JPEG, PNG, WebP, GIF, BMP)")],
    beam: Annotated[int, Form(ge=1)] = 3,
    n_best: Annotated[int, Form(ge=1)] = 3,
) -> S.CaptionResponse:
    """Captions with scores (n-best list, best first) for each uploaded image."""
    st, rid, t0 = _state(request), _rid(request), time.perf_counter()
    lim = st.cfg.limits
    if len(images) > lim.max_images:
        raise APIError(
            400,
            f"{len(images)} images; this server captions at most {lim.max_images} per request",
            param="images",
        )
    if beam > lim.max_beam:
        raise APIError(400, f"beam {beam} is above this server's cap of {lim.max_beam}", param="beam")
    if n_best > beam:
        raise APIError(400, f"n_best ({n_best}) must be <= beam ({beam})", param="n_best")
    blobs = []
    for f in images:
        blobs.append(
            (f.filename or "image", (f.content_type or "").split(";")[0].strip().lower(), await f.read())
        )
    system = st.system("caption")
    decoded = await run_in_threadpool(_decode_images, blobs, st)
    res = await st.call(system, {"images": decoded, "beam": beam, "n_best": n_best})
    latency = _ms(t0)
    st.log_event("caption", "request", request_id=rid, latency_ms=latency)
    st.log_event("caption", "impression", request_id=rid, latency_ms=latency)
    results = [
        S.ImageCaptions(
            filename=name, width=im.width, height=im.height,
            captions=[S.Caption(caption=c["caption"], score=float(c["score"])) for c in caps],
        )
        for (name, _, _), im, caps in zip(blobs, decoded, res)
    ]  # fmt: skip
    return S.CaptionResponse(results=results, request_id=rid)


# ---------------------------------------------------------------------------------------------- rag
@router.post("/v1/rag/ask", response_model=S.AskResponse, responses=ERRORS, tags=["rag"])
async def rag_ask(req: S.AskRequest, request: Request) -> S.AskResponse:
    """Answer a question from the indexed documents the user may read, with citations."""
    st, rid, t0 = _state(request), _rid(request), time.perf_counter()
    _check_len(req.question, "question", st.cfg.limits.max_prompt_chars)
    system = st.system("rag")
    item = {
        "question": req.question,
        "user": req.user,
        "groups": list(req.groups),
        "mode": req.mode,
        "k": req.k,
    }
    res = await st.call(system, item)
    latency = _ms(t0)
    kw = dict(user=req.user, session=req.session_id, request_id=rid, latency_ms=latency)
    st.log_event("rag", "request", **kw)
    st.log_event("rag", "impression", meta={"citations": len(res.get("citations") or [])}, **kw)
    extra = {k: v for k, v in res.items() if k not in ("answer", "citations", "retrieved")}
    return S.AskResponse(
        answer=res.get("answer") or "",
        citations=list(res.get("citations") or []),
        retrieved=list(res.get("retrieved") or []),
        request_id=rid,
        **_jsonable(extra),
    )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


# ------------------------------------------------------------------------------- OpenAI-compatible
def _check_sampling(req: S._SamplingFields, st: ServerState, max_tokens: int | None) -> dict[str, Any]:
    """Decoding params for the predictor after checking them against the server's caps."""
    lim = st.cfg.limits
    bad = req.unsupported()
    if bad:
        raise APIError(400, f"{bad} is not supported by this server", param=bad.split()[0])
    if req.n > lim.max_n:
        raise APIError(400, f"n={req.n} is above this server's cap of {lim.max_n}", param="n")
    if max_tokens is not None and max_tokens > lim.max_tokens:
        raise APIError(
            400, f"max_tokens={max_tokens} is above this server's cap of {lim.max_tokens}", param="max_tokens"
        )
    params = {
        "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
        "max_tokens": max_tokens or lim.default_max_tokens, "stop": req.stop, "seed": req.seed,
        "repetition_penalty": req.repetition_penalty,
    }  # fmt: skip
    return {k: v for k, v in params.items() if v is not None}


def _check_model(model: str, st: ServerState) -> None:
    if model not in CHAT_MODEL_IDS:
        avail = [n for n in ("chat",) if st.registry[n].mounted]
        state = "" if avail else " (not mounted)"
        msg = f"model {model!r} not found; this server's text model is 'chat'{state}"
        raise APIError(404, msg, param="model", code="model_not_found")


def _seeded(params: dict[str, Any], i: int) -> dict[str, Any]:
    # n choices from one seed must differ: choice i uses seed + i
    return params if "seed" not in params or i == 0 else {**params, "seed": params["seed"] + i}


def _usage(replies: list[dict[str, Any]], prompt_counted_once: bool = True) -> S.Usage:
    prompt = sum(r["usage"]["prompt_tokens"] for r in replies)
    if prompt_counted_once and replies:  # n choices of one prompt: OpenAI counts the prompt once
        prompt = replies[0]["usage"]["prompt_tokens"]
    completion = sum(r["usage"]["completion_tokens"] for r in replies)
    return S.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _safety(reply: dict[str, Any]) -> dict[str, Any] | None:
    """What the chat pipeline's safety layer decided (None for a backend without one)."""
    if "flagged" not in reply and "refused" not in reply:
        return None
    return {
        "refused": bool(reply.get("refused")),
        "flagged": list(reply.get("flagged") or []),
        "stage": reply.get("refusal_stage"),
    }


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Streams:
    """n streamed requests of one HTTP call: queued at once (a full queue is then a 429, not a broken
    stream), their text deltas `(index, text)` on one channel in order, then their replies."""

    def __init__(self, st: ServerState, system: Any, items: list[dict[str, Any]]) -> None:
        self.name = system.name
        self.channel = StreamChannel(asyncio.get_running_loop())
        jobs = []
        try:
            for i, item in enumerate(items):
                item["emit"] = self._emitter(item, i)
                jobs.append(system.batcher.enqueue(item))
        except Exception as e:  # noqa: BLE001 - QueueFull / BatcherClosed: an HTTP error, nothing sent yet
            for j in jobs:
                j.cancelled = True
            raise map_error(e, system.name) from None
        timeout = st.cfg.limits.request_timeout_s
        self.tasks = [asyncio.ensure_future(system.batcher.wait(j, timeout)) for j in jobs]
        self._left = len(self.tasks)
        for t in self.tasks:
            t.add_done_callback(self._done)
        self._first: tuple[int, str] | None = None
        self._ended = False

    def _emitter(self, item: dict[str, Any], i: int):  # noqa: ANN202 - called from the worker thread
        def emit(delta: str) -> None:
            item["streamed"] = True  # from now on a batch failure must not run it again
            self.channel.put((i, delta))

        return emit

    def _done(self, _: Any) -> None:
        self._left -= 1
        if self._left == 0:
            self.channel.end()  # after every delta: both go through the loop's queue in order

    def _failures(self) -> list[BaseException]:
        return [t.exception() for t in self.tasks if t.done() and not t.cancelled() and t.exception()]

    async def start(self) -> None:
        """Wait for the first delta. If every request failed before producing any text (bad input, a
        refused session, a timeout), raise its error now, while an HTTP error status can still be sent."""
        try:
            self._first = await self.channel.__anext__()
        except StopAsyncIteration:
            self._ended = True
            failures = self._failures()
            if failures and len(failures) == len(self.tasks):
                raise map_error(failures[0], self.name) from None

    async def deltas(self) -> AsyncIterator[tuple[int, str]]:
        if self._first is not None:
            yield self._first
        if not self._ended:
            async for item in self.channel:
                yield item

    def replies(self) -> list[dict[str, Any]]:
        """The final replies (raises the first failure)."""
        return [t.result() for t in self.tasks]

    def failure(self, fallback: BaseException) -> BaseException:
        return next(iter(self._failures()), fallback)

    def cancel(self) -> None:
        for t in self.tasks:
            if not t.done():
                t.cancel()


def _stream_error(e: BaseException, system: str) -> dict[str, Any]:
    try:
        err = map_error(e, system)
    except Exception:  # noqa: BLE001 - a bug; the client still gets a terminated stream
        err = APIError(500, "internal error; see the server log", type_="server_error")
    return err.body()


@router.post(
    "/v1/chat/completions",
    response_model=S.ChatCompletion,
    responses={
        **ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream=true"},
    },
    tags=["openai"],
)
async def chat_completions(req: S.ChatCompletionRequest, request: Request) -> Any:
    """OpenAI-compatible chat completion (non-streaming, or SSE chunks with `stream: true`)."""
    st, t0 = _state(request), time.perf_counter()
    lim = st.cfg.limits
    _check_model(req.model, st)
    if len(req.messages) > lim.max_messages:
        raise APIError(
            400,
            f"{len(req.messages)} messages; this server takes at most {lim.max_messages}",
            param="messages",
        )
    messages = []
    for i, m in enumerate(req.messages):
        text = m.text()
        _check_len(text, f"messages[{i}].content", lim.max_prompt_chars)
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    params = _check_sampling(req, st, req.max_completion_tokens or req.max_tokens)
    system = st.system("chat")
    session = req.session_id
    items = [
        {
            "kind": "chat",
            "messages": messages,
            "params": _seeded(params, i),
            "user": req.user,
            "session_id": session,
        }
        for i in range(req.n)
    ]
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def log_done(replies: list[dict[str, Any]]) -> None:
        sid = replies[0].get("session_id") if replies else session
        st.log_event("chat", "request", user=req.user, session=sid, request_id=cid, latency_ms=_ms(t0),
                     meta={"finish_reason": [r["finish_reason"] for r in replies]})  # fmt: skip

    if not req.stream:
        replies = await asyncio.gather(*(st.call(system, it) for it in items))
        log_done(replies)
        choices = [
            S.ChatChoice(
                index=i,
                message=S.AssistantMessage(
                    content=r["text"], refusal=r["text"] if r["finish_reason"] == "content_filter" else None
                ),
                finish_reason=r["finish_reason"],
            )
            for i, r in enumerate(replies)
        ]
        return S.ChatCompletion(
            id=cid, created=created, model=req.model, choices=choices, usage=_usage(replies),
            session_id=replies[0].get("session_id"), safety=[_safety(r) for r in replies],
        )  # fmt: skip

    streams = _Streams(st, system, items)
    await streams.start()
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model}
        return _sse({**body, "choices": choices, **extra})

    async def events() -> AsyncIterator[str]:
        try:
            for i in range(len(items)):
                yield chunk(
                    [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                )
            async for i, delta in streams.deltas():
                yield chunk([{"index": i, "delta": {"content": delta}, "finish_reason": None}])
            replies = streams.replies()
        except Exception as e:  # noqa: BLE001 - reported in the stream: the status line is already sent
            yield _sse(_stream_error(streams.failure(e), "chat"))
            yield "data: [DONE]\n\n"
            return
        finally:
            streams.cancel()
        log_done(replies)
        for i, r in enumerate(replies):
            final = {"index": i, "delta": {}, "finish_reason": r["finish_reason"]}
            yield chunk([final], session_id=r.get("session_id"), safety=_safety(r))
        if include_usage:
            yield chunk([], usage=_usage(replies).model_dump())
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post(
    "/v1/completions",
    response_model=S.Completion,
    responses={
        **ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream=true"},
    },
    tags=["openai"],
)
async def completions(req: S.CompletionRequest, request: Request) -> Any:
    """OpenAI-compatible text completion: continue raw prompt text with the chat system's language model."""
    st, t0 = _state(request), time.perf_counter()
    lim = st.cfg.limits
    _check_model(req.model, st)
    if req.suffix:
        raise APIError(400, "suffix is not supported by this server", param="suffix")
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts or len(prompts) > lim.max_texts:
        raise APIError(400, f"prompt must hold 1..{lim.max_texts} strings", param="prompt")
    for i, p in enumerate(prompts):
        _check_len(p, f"prompt[{i}]", lim.max_prompt_chars)
    params = _check_sampling(req, st, req.max_tokens)
    system = st.system("chat")
    if system.predictor.lm is None:
        raise APIError(503, "the chat pipeline serves no raw-text completions; use /v1/chat/completions",
                       type_="unavailable_error", code="system_unavailable")  # fmt: skip
    items = [
        {"kind": "text", "prompt": p, "params": _seeded(params, j), "user": req.user}
        for p in prompts
        for j in range(req.n)
    ]
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    echo = [p for p in prompts for _ in range(req.n)]

    def usage(replies: list[dict[str, Any]]) -> S.Usage:
        per_prompt = [replies[k * req.n : (k + 1) * req.n] for k in range(len(prompts))]
        us = [_usage(r) for r in per_prompt]
        p, c = sum(u.prompt_tokens for u in us), sum(u.completion_tokens for u in us)
        return S.Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)

    if not req.stream:
        replies = await asyncio.gather(*(st.call(system, it) for it in items))
        st.log_event(
            "chat", "request", user=req.user, request_id=cid, latency_ms=_ms(t0), meta={"api": "completions"}
        )
        choices = [
            S.CompletionChoice(
                index=i, text=(echo[i] if req.echo else "") + r["text"], finish_reason=r["finish_reason"]
            )
            for i, r in enumerate(replies)
        ]
        return S.Completion(id=cid, created=created, model=req.model, choices=choices, usage=usage(replies))

    streams = _Streams(st, system, items)
    await streams.start()
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return _sse({"id": cid, "object": "text_completion", "created": created, "model": req.model,
                     "choices": choices, **extra})  # fmt: skip

    async def events() -> AsyncIterator[str]:
        try:
            if req.echo:
                for i, p in enumerate(echo):
                    yield chunk([{"index": i, "text": p, "finish_reason": None, "logprobs": None}])
            async for i, delta in streams.deltas():
                yield chunk([{"index": i, "text": delta, "finish_reason": None, "logprobs": None}])
            replies = streams.replies()
        except Exception as e:  # noqa: BLE001 - reported in the stream
            yield _sse(_stream_error(streams.failure(e), "chat"))
            yield "data: [DONE]\n\n"
            return
        finally:
            streams.cancel()
        st.log_event(
            "chat", "request", user=req.user, request_id=cid, latency_ms=_ms(t0), meta={"api": "completions"}
        )
        for i, r in enumerate(replies):
            yield chunk([{"index": i, "text": "", "finish_reason": r["finish_reason"], "logprobs": None}])
        if include_usage:
            yield chunk([], usage=usage(replies).model_dump())
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ------------------------------------------------------------------------------------- chat sessions
def _session_store(request: Request) -> Any:
    """The chat pipeline (which keeps the sessions), or a 501 for a backend without sessions."""
    backend = _state(request).system("chat").predictor
    if not hasattr(backend.pipeline, "list_sessions"):
        raise APIError(
            501, "this chat backend keeps no sessions (it needs the chat pipeline)", code="no_sessions"
        )
    return backend.pipeline


async def _sessions_call(fn: Any, *args: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args)
    except Exception as e:  # noqa: BLE001 - SessionNotFound -> 404; a bug is re-raised
        raise map_error(e, "chat") from None


@router.get("/v1/chat/sessions", response_model=S.SessionList, responses=ERRORS, tags=["chat"])
async def chat_sessions(
    request: Request, user: Annotated[str | None, Query(max_length=128)] = None
) -> S.SessionList:
    """The user's chat sessions, most recently used first."""
    pipe = _session_store(request)
    return S.SessionList(data=await _sessions_call(pipe.list_sessions, user))


@router.get("/v1/chat/sessions/{session_id}", response_model=S.SessionDetail, responses=ERRORS, tags=["chat"])
async def chat_session(
    session_id: Annotated[str, Path(max_length=128)],
    request: Request,
    user: Annotated[str | None, Query(max_length=128)] = None,
) -> S.SessionDetail:
    """One session with its messages (404 if it is not this user's)."""
    pipe = _session_store(request)
    return S.SessionDetail(**await _sessions_call(pipe.get_session, user, session_id))


@router.delete("/v1/chat/sessions/{session_id}", response_model=S.Deleted, responses=ERRORS, tags=["chat"])
async def delete_chat_session(
    session_id: Annotated[str, Path(max_length=128)],
    request: Request,
    user: Annotated[str | None, Query(max_length=128)] = None,
) -> S.Deleted:
    """Delete a session (404 if it is not this user's)."""
    pipe = _session_store(request)
    await _sessions_call(pipe.delete_session, user, session_id)
    st = _state(request)
    st.log_event("chat", "session_end", user=user, session=session_id)
    return S.Deleted(id=session_id, deleted=True)


# ------------------------------------------------------------------------------------------- events
@router.post("/v1/events", response_model=S.EventAck, responses=ERRORS, tags=["events"])
async def events(req: S.EventRequest, request: Request) -> S.EventAck:
    """Record what the user did with a result (accept, reject, thumbs, copy, citation click, ...)."""
    st = _state(request)
    meta = req.meta or {}
    if len(json.dumps(meta, default=str)) > 4096:
        raise APIError(400, "meta is larger than 4096 bytes of JSON", param="meta")
    st.log_event(
        req.system, req.event, user=req.user, session=req.session, request_id=req.request_id,
        latency_ms=req.latency_ms, value=req.value, meta=meta or None,
    )  # fmt: skip
    return S.EventAck(logged=st.events is not None)
