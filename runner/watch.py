"""Waiting for a job to change: its per-job NOTIFY channel wakes the waiter, which re-reads
the row (SSE, `?wait=true`). After a listener reconnect every waiter is woken to re-read."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from runner.db.listener import Listener, job_channel, wallet_channel


class JobWatch:
    def __init__(self, listener: Listener | None) -> None:
        self.listener = listener
        self._events: set[asyncio.Event] = set()

    def watching(self, job_id: uuid.UUID) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """An Event set whenever the job may have changed; clear it before each re-read."""
        return self.watching_channel(job_channel(job_id))

    def watching_wallet(self, address: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """An Event set whenever any of the wallet's jobs may have changed."""
        return self.watching_channel(wallet_channel(address))

    @contextlib.asynccontextmanager
    async def watching_channel(self, channel: str) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()

        def changed(_payload: str) -> None:
            event.set()

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
