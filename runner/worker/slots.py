"""Turns at limited backends (a backend's `concurrency`): an execution takes one of its
backend's slots -- shared by every instance, counted by Postgres (runner_take_slot) -- before
it is sent, and waits while none is free. Slots are the backend's running executions, so
none leaks: a finished, cancelled or requeued execution frees its own."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg

from runner.db import until_written
from runner.db.notify import Notifier
from runner.worker import store

POLL_MAX_S = 1.0  # a slot freed on another instance is seen within this


class Slots:
    def __init__(self, pool: asyncpg.Pool, notifier: Notifier | None = None) -> None:
        self.pool = pool
        self.notifier = notifier
        # Set when one of this instance's executions of the backend ends: its waiters try
        # again at once rather than at their next poll.
        self._freed: dict[str, asyncio.Event] = {}

    async def take(
        self, execution_id: uuid.UUID, backend: str, total: int, job_id: uuid.UUID, owner: str
    ) -> bool:
        """Wait for a slot and take it (the execution is then `running`); False if the
        execution was cancelled meanwhile."""
        attempt = 0
        while True:
            freed = self._freed.setdefault(backend, asyncio.Event())
            outcome: str = await until_written(
                lambda: self.pool.fetchval(store.TAKE_SLOT, execution_id, backend, total),
                "slot",
                execution_id=str(execution_id),
            )
            if outcome != "full":
                if outcome == "taken" and self.notifier is not None:
                    self.notifier.changed(job_id, owner)  # the execution is running now
                return outcome == "taken"
            attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(POLL_MAX_S, 0.05 * 2**attempt)):
                    await freed.wait()

    def release(self, backend: str) -> None:
        """An execution of `backend` has ended here: wake this instance's waiters."""
        freed = self._freed.pop(backend, None)
        if freed is not None:
            freed.set()
