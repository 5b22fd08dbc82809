"""Continuous batching of model calls for an asyncio server (the serving replicas' ``/embed`` and ``/search``).

Ray Serve's ``@serve.batch`` waits ``batch_wait_timeout_s`` after the first request of a batch for others to
join it, so a lone request always pays that wait; with the wait set to 0 it forms batches of one, queued
behind the running one. This batcher runs a batch as soon as the model is free and takes into it every
request that arrived while the previous batch ran (up to ``max_batch_size``): no wait when idle, full
batches under load — the "dynamic batching with no queue delay" of inference servers. ``max_wait_s`` > 0
adds Serve's behaviour back: a batch with room waits that long for more before it runs.

Every call of ``fn`` runs in ``pool`` (one thread: one forward pass at a time), never on the event loop.
A request cancelled while queued (its client went away, a timeout) is dropped from its batch; one cancelled
while its batch runs is not interrupted (the others in the batch still get their answers).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class ContinuousBatcher(Generic[T, R]):
    """``await batcher(item)`` → ``fn([... item ...])``'s result for that item."""

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], pool: Executor, max_batch_size: int = 16,
                 max_wait_s: float = 0.0) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size: {max_batch_size!r} must be an int >= 1")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s: {max_wait_s!r} must be >= 0")
        self.fn, self.pool = fn, pool
        self.max_batch_size, self.max_wait_s = max_batch_size, float(max_wait_s)
        self._queue: list[tuple[T, asyncio.Future]] = []
        self._arrived: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None
        self.batches = 0  # batches run so far (and their sizes' sum): for tests and metrics
        self.items = 0

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._queue.append((item, fut))
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.set()
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._drain())
        return await fut

    def _take(self) -> list[tuple[T, asyncio.Future]]:
        live = [(x, f) for x, f in self._queue if not f.done()]  # drop requests cancelled while queued
        batch, self._queue = live[: self.max_batch_size], live[self.max_batch_size:]
        return batch

    async def _fill(self) -> None:
        """``max_wait_s``: let a batch with room wait for more arrivals (at most that long in all)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(self._queue) < self.max_batch_size and (left := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self.max_wait_s > 0:
                await self._fill()
            batch = self._take()
            if not batch:
                continue
            try:
                results: Any = await loop.run_in_executor(self.pool, self.fn, [x for x, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batched call returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # every request of the batch gets the error, the batcher goes on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)
