"""Natural batching of writes: what is submitted while a flush is under way (or within the same
loop iteration) goes out in the next one, as one statement. An idle system waits for
nothing; a busy one commits hundreds of results per round trip and WAL flush."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

from runner.db.errors import backoff_s, is_database_error, is_transient

log = structlog.get_logger("runner.db.batch")

T = TypeVar("T")
R = TypeVar("R")

CLOSING_RETRY_S = 10.0


class Batcher(Generic[T, R]):
    """`linger_s` > 0: the first item waits that long for others to join it (unless the
    batch fills up, an item is urgent, or flush_soon() is called), for writes nobody waits
    on: a stream of them then costs one statement per interval, not one per item."""

    def __init__(
        self,
        name: str,
        flush: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_items: int = 500,
        max_in_flight: int = 2,
        linger_s: float = 0.0,
    ) -> None:
        self.name = name
        self._flush = flush
        self.max_items = max_items
        self.linger_s = linger_s
        self._semaphore = asyncio.Semaphore(max_in_flight)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = False
        self._lingering: asyncio.TimerHandle | None = None
        self._closing_at: float | None = None

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
            batch, self._pending = self._pending[: self.max_items], self._pending[self.max_items :]
            if self._pending:
                self.flush_soon()  # they have waited already
            if not batch:
                return
            try:
                outcomes = await self._flush_classified([item for item, _ in batch])
            except BaseException as exc:
                outcomes = [exc if isinstance(exc, Exception) else RuntimeError(repr(exc))] * len(batch)
                if not isinstance(exc, Exception):
                    self._settle(batch, outcomes)
                    raise
                log.warning("batch_flush_failed", batch=self.name, items=len(batch), error=repr(exc))
            self._settle(batch, outcomes)

    @staticmethod
    def _settle(batch: list[tuple[T, asyncio.Future[R]]], outcomes: list[R | Exception]) -> None:
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def _flush_classified(self, items: list[T]) -> list[R | Exception]:
        """Flush, telling failures apart (runner.db.is_transient). A transient one is tried
        again with backoff until Postgres is back (every write is conditional, so a retry
        does no harm) -- for a bounded time once the batcher is closing. A permanent one is
        a data problem in some item: the items are written apart, so that only that item
        fails and its neighbours (other jobs, other wallets) are written as usual."""
        attempt = 0
        while True:
            try:
                return list(await self._flush(items))
            except Exception as exc:
                if not is_database_error(exc):
                    raise
                if not is_transient(exc):
                    if len(items) == 1:
                        raise
                    log.warning("batch_split", batch=self.name, items=len(items), error=repr(exc))
                    return [await self._flush_one(item) for item in items]
                attempt += 1
                loop = asyncio.get_running_loop()
                if self._closing_at is not None and loop.time() - self._closing_at > CLOSING_RETRY_S:
                    raise
                log.warning(
                    "batch_flush_retry", batch=self.name, items=len(items), attempt=attempt, error=repr(exc)
                )
            await asyncio.sleep(backoff_s(attempt))

    async def _flush_one(self, item: T) -> R | Exception:
        try:
            [outcome] = await self._flush_classified([item])
        except Exception as exc:
            log.error("batch_item_failed", batch=self.name, error=repr(exc))
            return exc
        return outcome

    async def close(self) -> None:
        """Flush what is pending and wait for every flush under way (on shutdown, before the
        pool closes); a database that stays away is given CLOSING_RETRY_S more."""
        self._closing_at = asyncio.get_running_loop().time()
        self.flush_soon()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
