"""Waiting for a job to change: a `runner_change` notification naming the job (or its wallet)
wakes the waiter, which re-reads the row (SSE, `?wait=true`). The listener LISTENs on that one
channel; the routing to waiters is here, by the keys in the payload (runner.db.notify).
After a listener reconnect every waiter is woken to re-read.

Each key watched here is registered in Postgres (the `watched` table) before its waiter's
first read, and renewed while watched: a change hint goes out only for keys someone watches
(notify.HINT_SQL), since each notifying commit wakes every listening backend of the database."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

from runner.db import notify


class JobWatch:
    def __init__(self, pool: asyncpg.Pool | None = None) -> None:
        self.pool = pool  # None: nothing is registered (an instance with no API)
        self._events: dict[str, set[asyncio.Event]] = {}
        self._fresh: dict[str, float] = {}  # key -> loop time until which its row needs no renewal

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
            if self._fresh.get(key, float("-inf")) < asyncio.get_running_loop().time():
                await self._register([key])  # before the caller's first read: no hint falls between
            yield event
        finally:
            events = self._events.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[key]

    async def _register(self, keys: list[str]) -> None:
        if self.pool is None or not keys:
            return
        await self.pool.execute(notify.WATCH_SQL, sorted(keys), notify.WATCH_TTL_S)
        fresh_until = asyncio.get_running_loop().time() + notify.WATCH_RENEW_S
        for key in keys:
            self._fresh[key] = fresh_until

    async def renew(self) -> None:
        """Keep the keys watched here registered (periodic, and after a listener reconnect: a
        crash empties the table); the others expire by themselves. Then drop rows long expired."""
        self._fresh = {k: t for k, t in self._fresh.items() if k in self._events}
        await self._register(list(self._events))
        if self.pool is not None:
            await self.pool.execute(notify.WATCH_CLEANUP_SQL)

    async def reregister(self) -> None:
        """After a listener reconnect (a crash may have emptied the table): every key watched
        here registered again, none taken as registered meanwhile, then every waiter woken
        -- a change between its re-read at the reconnect and now sent no hint."""
        self._fresh.clear()
        await self.renew()
        self.wake_all()

    def on_change(self, payload: str) -> None:
        """A runner_change notification: wake the waiters of the jobs and wallets it names."""
        for key in notify.decode_change(payload):
            for event in self._events.get(key, ()):
                event.set()

    def wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()
