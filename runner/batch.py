"""Natural batching of writes: what is submitted while a flush is under way (or within the same
loop iteration) goes out in the next one, as one statement. An idle system waits for
nothing; a busy one commits hundreds of results per round trip and WAL flush."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import asyncpg
import structlog

log = structlog.get_logger("runner.batch")

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """`linger_s` > 0: the first item waits that long for others to join it (unless the
    batch fills up, an item is urgent, or flush_soon() is called), for writes nobody waits
    on: a stream of them then costs one statement per interval, not one per item."""

    def __init__(self, name: str, flush: Callable[[list[T]], Awaitable[list[R]]], *,
                 max_items: int = 500, max_in_flight: int = 2, linger_s: float = 0.0) -> None:
        self.name = name
        self._flush = flush
        self.max_items = max_items
        self.linger_s = linger_s
        self._semaphore = asyncio.Semaphore(max_in_flight)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = False
        self._lingering: asyncio.TimerHandle | None = None

    def put(self, item: T, *, urgent: bool = False) -> asyncio.Future[R]:
        """Queue `item` without waiting: the batcher owns the write from here (close()
        waits for it). The future resolves with its result once its batch commits."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if urgent or not self.linger_s or len(self._pending) >= self.max_items:
            self.flush_soon()
        elif self._lingering is None and not self._scheduled:
            self._lingering = loop.call_later(self.linger_s, self.flush_soon)
        return future

    def flush_soon(self) -> None:
        """Flush what is pending on the next loop turn, lingering no more."""
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if self._pending and not self._scheduled:
            self._scheduled = True
            task = asyncio.get_running_loop().create_task(self._run(), name=f"batch-{self.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def submit(self, item: T) -> R:
        """Queue `item` and wait for its batch to commit; returns its result."""
        # Shielded: if the submitter is cancelled, the write still happens (it is conditional).
        return await asyncio.shield(self.put(item))

    async def _run(self) -> None:
        async with self._semaphore:
            self._scheduled = False
            batch, self._pending = self._pending[: self.max_items], self._pending[self.max_items:]
            if self._pending:
                self.flush_soon()  # they have waited already
            if not batch:
                return
            try:
                results = await self._flush_retrying([item for item, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                if not isinstance(exc, Exception):
                    raise
                log.warning("batch_flush_failed", batch=self.name, items=len(batch), error=repr(exc))
                return
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _flush_retrying(self, items: list[T]) -> list[R]:
        """Flush; once more if Postgres broke a deadlock by aborting it (every write is
        conditional, so a retry does no harm)."""
        for attempt in range(3):
            try:
                return await self._flush(items)
            except asyncpg.DeadlockDetectedError:
                if attempt == 2:
                    raise
                log.warning("deadlock_retried", batch=self.name, attempt=attempt + 1)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Flush what is pending and wait for every flush under way (on shutdown, before the
        pool closes)."""
        self.flush_soon()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
