"""LISTEN on a dedicated connection (not from the pool) and dispatch notifications.

NOTIFY is a wake-up hint; Postgres rows are the truth. So when the connection is lost and
comes back, every `on_reconnect` callback runs: they re-read what they care about.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from runner.db import connect
from runner.db.notify import PROBE

log = structlog.get_logger("runner.db.listener")

# The channels and their payloads: runner.db.notify.
# How long the start-up self-test waits for its own notification (SPEC section 2).
SELF_TEST_TIMEOUT_S = 5.0
# What a lost self-test (or a prepared statement gone missing) means, for the one line.
POOLER = (
    "DATABASE_URL goes through a transaction-mode pooler (PgBouncer), which loses LISTEN/NOTIFY "
    "(and prepared statements): connect directly, or through a session-mode pooler "
    "(Fly Managed Postgres' `fly mpg attach` sets the pooled URL: use the direct one)"
)

Callback = Callable[[str], None]


class Listener:
    def __init__(self, dsn: str, *, health_interval_s: float = 5.0) -> None:
        self.dsn = dsn
        self.health_interval_s = health_interval_s
        self._handlers: dict[str, list[Callback]] = {}
        self._on_reconnect: list[Callable[[], None]] = []
        self._conn: asyncpg.Connection | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        # One statement at a time on the connection: LISTEN/UNLISTEN come from many tasks.
        self._lock = asyncio.Lock()
        self.connections = 0
        self.reconnects = 0
        self.last_error: BaseException | None = None
        self._probes: dict[str, asyncio.Event] = {}
        self.subscribe(PROBE, self._probe_came)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def backend_pid(self) -> int | None:
        return self._conn.get_server_pid() if self._conn is not None else None

    def subscribe(self, channel: str, callback: Callback) -> None:
        """Before run(): the listener LISTENs on every subscribed channel at each connection
        (a few fixed ones; the routing is in the payloads, runner.db.notify)."""
        self._handlers.setdefault(channel, []).append(callback)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._on_reconnect.append(callback)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def self_test(self, send: Callable[[str], Awaitable[None]]) -> float | None:
        """Whether a notification sent now (by `send(payload)`, on another connection) reaches
        this listener: its round trip in seconds, or None if it did not come within
        SELF_TEST_TIMEOUT_S.
        Through a transaction-mode pooler the LISTEN stays on a server connection the pooler
        has handed to other clients, so nothing ever comes back."""
        nonce = uuid.uuid4().hex
        came = self._probes[nonce] = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            began = loop.time()
            await send(nonce)
            try:
                async with asyncio.timeout(SELF_TEST_TIMEOUT_S):
                    await came.wait()
            except TimeoutError:
                return None
            return loop.time() - began
        finally:
            self._probes.pop(nonce, None)

    def _probe_came(self, payload: str) -> None:
        came = self._probes.get(payload)
        if came is not None:
            came.set()

    def _dispatch(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        for callback in self._handlers.get(channel, ()):
            try:
                callback(payload)
            except Exception:
                log.exception("notification_handler_failed", channel=channel, payload=payload)

    async def run(self) -> None:
        """Stay connected until cancelled, reconnecting with capped exponential backoff."""
        delay = 0.05
        while True:
            try:
                await self._session()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
                log.warning("listener_connect_failed", error=repr(exc), retry_in_s=round(delay, 3))
                await asyncio.sleep(delay * (1 + random.random() / 2))
                delay = min(delay * 2, 5.0)

    async def _session(self) -> None:
        conn = await connect(self.dsn, application_name="runner-listener")  # findable in pg_stat_activity
        self._conn = conn
        self._lost.clear()
        conn.add_termination_listener(lambda _c: self._lost.set())
        try:
            async with asyncio.timeout(2 * self.health_interval_s), self._lock:
                for channel in list(self._handlers):
                    await conn.add_listener(channel, self._dispatch)
                self._connected.set()
            self.connections += 1
            if self.connections > 1:
                self.reconnects += 1
                log.info("listener_reconnected")
                # Notifications sent while we were away are lost: re-read the truth.
                for callback in self._on_reconnect:
                    callback()
            while not self._lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.health_interval_s):
                        await self._lost.wait()
                if not self._lost.is_set():
                    # A half-open socket raises nothing until used: probe it (the wait for
                    # the lock counts: a statement stuck on the connection is as bad).
                    async with asyncio.timeout(self.health_interval_s), self._lock:
                        await conn.fetchval("SELECT 1")
            log.warning("listener_connection_lost")
        finally:
            self._connected.clear()
            self._conn = None
            # Shielded so a cancel during close still releases the server's backend.
            await asyncio.shield(_close_quietly(conn))


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except Exception:
        conn.terminate()
