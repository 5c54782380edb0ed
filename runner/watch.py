"""Waiting for a job to change: a `runner_change` notification naming the job (or its wallet)
wakes the waiter, which re-reads the row (SSE, `?wait=true`). The listener LISTENs on that one
channel; the routing to waiters is here, by the keys in the payload (runner.db.notify).
After a listener reconnect every waiter is woken to re-read."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from runner.db import notify


class JobWatch:
    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    def watching(self, job_id: uuid.UUID) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """An Event set whenever the job may have changed; clear it before each re-read."""
        return self._watching(notify.job_key(job_id))

    def watching_wallet(self, address: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """An Event set whenever any of the wallet's jobs may have changed."""
        return self._watching(notify.wallet_key(address))

    @contextlib.asynccontextmanager
    async def _watching(self, key: str) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()
        self._events.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            events = self._events.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[key]

    def on_change(self, payload: str) -> None:
        """A runner_change notification: wake the waiters of the jobs and wallets it names."""
        for key in notify.decode_change(payload):
            for event in self._events.get(key, ()):
                event.set()

    def wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()
