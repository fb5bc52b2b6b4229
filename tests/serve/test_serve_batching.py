"""Dynamic batching: batches form under concurrency, keys keep settings apart, the queue is bounded, one
bad request cannot fail its batch, and batched results equal one-at-a-time results."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from serve_helpers import make_config

from gensys.serve.batching import BatcherClosed, DynamicBatcher, QueueFull


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_keep_order():
    calls: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        calls.append(list(items))
        time.sleep(0.01)
        return [x * x for x in items]

    b = DynamicBatcher("sq", square, max_batch=8, window_s=0.05, max_queue=64)

    async def main() -> list[int]:
        return await asyncio.gather(*(b.submit(i) for i in range(20)))

    try:
        assert run(main()) == [i * i for i in range(20)]
    finally:
        b.close()
    assert sorted(x for c in calls for x in c) == list(range(20))
    assert max(len(c) for c in calls) == 8 and len(calls) < 20
    assert b.max_seen_batch == 8 and b.items == 20


def test_batches_only_share_a_key():
    seen: list[set[str]] = []

    def fn(items: list[tuple[str, int]]) -> list[int]:
        seen.append({k for k, _ in items})
        return [v for _, v in items]

    b = DynamicBatcher("k", fn, max_batch=16, window_s=0.05, key=lambda item: item[0])

    async def main() -> list[int]:
        return await asyncio.gather(*(b.submit(("ab"[i % 2], i)) for i in range(10)))

    try:
        assert run(main()) == list(range(10))
    finally:
        b.close()
    assert all(len(keys) == 1 for keys in seen)


def test_bad_item_fails_alone():
    def fn(items: list[int]) -> list[float]:
        return [1 / x for x in items]

    b = DynamicBatcher("div", fn, max_batch=4, window_s=0.05)

    async def main() -> list:
        return await asyncio.gather(*(b.submit(x) for x in (1, 0, 2, 4)), return_exceptions=True)

    try:
        out = run(main())
    finally:
        b.close()
    assert out[0] == 1.0 and out[2] == 0.5 and out[3] == 0.25
    assert isinstance(out[1], ZeroDivisionError)


def test_queue_is_bounded_and_timeouts_drop_work():
    gate = threading.Event()
    ran: list[int] = []

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        ran.extend(items)
        return items

    b = DynamicBatcher("slow", slow, max_batch=1, window_s=0.0, max_queue=2)

    async def main() -> None:
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.1)  # the worker is now blocked inside slow([0])
        waiting = [asyncio.ensure_future(b.submit(i, timeout=0.05)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit(3)
        for w in waiting:
            with pytest.raises(asyncio.TimeoutError):
                await w
        gate.set()
        assert await first == 0

    try:
        run(main())
        time.sleep(0.1)
    finally:
        b.close()
    assert ran == [0]  # the timed-out requests never reached the model
    with pytest.raises(BatcherClosed):
        run(b.submit(5))


def test_server_batches_concurrent_requests_and_results_match(tiny_models, registry, tmp_path, monkeypatch):
    """Concurrent HTTP requests are served in shared predictor calls with the same answers as alone."""
    from gensys.serve.app import create_app

    app = create_app(make_config(tiny_models, tmp_path), registry)
    chat_batches: list[int] = []  # sizes of the chat pipeline's calls for /v1/chat/completions
    chat_fn = registry["chat"].batcher.fn

    def recording(items: list) -> list:
        if items[0]["kind"] == "chat":
            chat_batches.append(len(items))
        return chat_fn(items)

    monkeypatch.setattr(registry["chat"].batcher, "fn", recording)
    texts = ["See you at", "Thanks for the update. Please let me ", "See you at the", "Thanks for the"]
    greedy = {"model": "chat", "max_tokens": 8, "temperature": 0}

    async def call_all(concurrent: bool) -> list:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
            reqs = [lambda t=t: c.post("/v1/compose/suggest", json={"text": t}) for t in texts]
            reqs += [
                lambda t=t: c.post(
                    "/v1/chat/completions", json={**greedy, "messages": [{"role": "user", "content": t}]}
                )
                for t in texts
            ]
            reqs += [lambda t=t: c.post("/v1/completions", json={**greedy, "prompt": t}) for t in texts]
            if concurrent:
                rs = await asyncio.gather(*(r() for r in reqs))
            else:
                rs = [await r() for r in reqs]
        bodies = [r.json() for r in rs]
        return (
            [b["suggestion"] for b in bodies[:4]]
            + [b["choices"][0]["message"]["content"] for b in bodies[4:8]]
            + [b["choices"][0]["text"] for b in bodies[8:]]
        )

    for name in ("compose", "chat"):
        registry[name].batcher.max_seen_batch = 0
    alone = run(call_all(concurrent=False))
    assert registry["compose"].batcher.max_seen_batch == 1
    assert chat_batches == [1, 1, 1, 1]
    chat_batches.clear()
    together = run(call_all(concurrent=True))
    assert together == alone
    assert registry["compose"].batcher.max_seen_batch > 1
    # conversations share pipeline calls (`ChatPipeline.complete_batch`), raw-text completions LM calls
    assert max(chat_batches) > 1 and sum(chat_batches) == 4
    assert registry["chat"].batcher.max_seen_batch > 1
