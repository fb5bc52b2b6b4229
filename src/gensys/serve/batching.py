"""Dynamic batching: one worker thread per model gathers concurrent requests into one predictor call.

    batcher = DynamicBatcher("compose", lambda items: predictor.suggest_batch(items), window_s=0.005)
    result = await batcher.submit(item, timeout=30)

The worker takes the oldest waiting request, then waits up to `window_s` for up to `max_batch - 1` more
with the same batch key (requests with different decoding settings cannot share a call), and calls
`fn(items) -> results` (one result per item, in order; an exception instance as a result fails only that
item). The queue is bounded: `submit` raises `QueueFull` instead of letting memory grow. If a batch fails,
its items are retried one by one (except those `retryable` refuses), so one bad request cannot fail the
others. A request that times out while waiting is dropped before it reaches the model.

Streaming requests pass an `emit` callback inside their item; the worker calls it from its thread and
the handler receives the deltas through `StreamChannel`, a thread-safe bridge into the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The model's request queue is full (the server answers 429)."""


class BatcherClosed(Exception):
    """The batcher was shut down (the server answers 503)."""


@dataclass
class _Job:
    item: Any
    key: Hashable
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


def _resolve(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    def set_it() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    job.loop.call_soon_threadsafe(set_it)


def _deliver(job: _Job, result: Any) -> None:
    # a batch function may return an exception for one item: that request fails, the others do not
    if isinstance(result, BaseException):
        _resolve(job, error=result)
    else:
        _resolve(job, result=result)


class DynamicBatcher:
    """Batches calls to `fn(list[item]) -> list[result]` on one background thread."""

    def __init__(
        self,
        name: str,
        fn: Callable[[list[Any]], list[Any]],
        *,
        max_batch: int = 16,
        window_s: float = 0.005,
        max_queue: int = 32,
        key: Callable[[Any], Hashable] | None = None,
        retryable: Callable[[Any], bool] | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.max_batch = max(1, max_batch)
        self.window_s = max(0.0, window_s)
        self.max_queue = max(1, max_queue)
        self.key = key or (lambda item: None)
        # an item that already streamed text to its client must not run again after a batch failure
        self.retryable = retryable or (lambda item: True)
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # figures for /readyz and the benchmark
        self.batches = 0
        self.items = 0
        self.max_seen_batch = 0
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def enqueue(self, item: Any) -> _Job:
        """Queue `item` now (call from the event loop); raises QueueFull or BatcherClosed at once."""
        loop = asyncio.get_running_loop()
        job = _Job(item, self.key(item), loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"the {self.name} model is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(
                    f"the {self.name} model has {len(self._jobs)} requests waiting; retry shortly"
                )
            self._jobs.append(job)
            self._cond.notify()
        return job

    async def wait(self, job: _Job, timeout: float | None = None) -> Any:
        """The result of an enqueued job; raises asyncio.TimeoutError or the model's error."""
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except (TimeoutError, asyncio.CancelledError):
            job.cancelled = True  # the worker skips it if it has not started yet
            raise

    async def submit(self, item: Any, timeout: float | None = None) -> Any:
        """Queue `item` and wait for its result."""
        return await self.wait(self.enqueue(item), timeout)

    def _take_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed and not self._jobs:
                return None
            first = self._jobs.popleft()
            batch = [first]
            if self.max_batch == 1:
                return batch
            deadline = time.perf_counter() + self.window_s
            while len(batch) < self.max_batch:
                # take every queued job with the same key (others keep their place for the next batch)
                for job in list(self._jobs):
                    if job.key == first.key and len(batch) < self.max_batch:
                        self._jobs.remove(job)
                        batch.append(job)
                left = deadline - time.perf_counter()
                if len(batch) >= self.max_batch or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = [j for j in batch if not j.cancelled]
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            self.max_seen_batch = max(self.max_seen_batch, len(batch))
            try:
                results = self.fn([j.item for j in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"{self.name}: predictor returned {len(results)} results for {len(batch)} inputs"
                    )
            except Exception as e:  # noqa: BLE001 - isolate the failing request below
                if len(batch) == 1:
                    _resolve(batch[0], error=e)
                    continue
                for job in batch:
                    if not self.retryable(job.item):
                        _resolve(job, error=e)
                        continue
                    try:
                        _deliver(job, self.fn([job.item])[0])
                    except Exception as e1:  # noqa: BLE001 - handed to the waiting request
                        _resolve(job, error=e1)
                continue
            for job, res in zip(batch, results):
                _deliver(job, res)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the batch it is running; waiting requests fail with BatcherClosed."""
        with self._cond:
            self._closed = True
            pending = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        for job in pending:
            _resolve(job, error=BatcherClosed(f"the {self.name} model is shutting down"))
        self._thread.join(timeout)


class StreamChannel:
    """Hands text deltas from the batcher's thread to an async handler, in order.

    The worker calls `put(value)` (thread-safe); the handler iterates `async for value in channel`. A
    consumer that went away sets `closed`, which the producer checks to stop decoding early.
    """

    _END = object()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def put(self, value: Any) -> None:
        """Called from the worker thread."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, value)

    def end(self) -> None:
        self.put(self._END)

    def __aiter__(self) -> StreamChannel:
        return self

    async def __anext__(self) -> Any:
        value = await self.queue.get()
        if value is self._END:
            raise StopAsyncIteration
        return value


__all__ = ["BatcherClosed", "DynamicBatcher", "QueueFull", "StreamChannel"]
