"""Waiting for a job to change: its per-job NOTIFY channel wakes the waiter, which re-reads
the row (SSE, `?wait=true`). After a listener reconnect every waiter is woken to re-read."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from runner.db.listener import Listener, job_channel


class JobWatch:
    def __init__(self, listener: Listener | None) -> None:
        self.listener = listener
        self._events: set[asyncio.Event] = set()

    @contextlib.asynccontextmanager
    async def watching(self, job_id: uuid.UUID) -> AsyncIterator[asyncio.Event]:
        """An Event set whenever the job may have changed; clear it before each re-read."""
        event = asyncio.Event()

        def changed(_payload: str) -> None:
            event.set()

        channel = job_channel(job_id)
        if self.listener is not None:
            await self.listener.watch(channel, changed)
        self._events.add(event)
        try:
            yield event
        finally:
            self._events.discard(event)
            if self.listener is not None:
                await asyncio.shield(self.listener.unwatch(channel, changed))

    def wake_all(self) -> None:
        for event in self._events:
            event.set()
