"""Postgres errors, classified once, and the retries built on that classification."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import structlog

log = structlog.get_logger("runner.db")

T = TypeVar("T")

# Postgres errors, classified once. Transient: the connection or the server went away, or
# Postgres aborted the statement for a reason of its own (deadlock, serialization, a
# cancelled query, no room) -- the same statement may succeed later. Everything else (data
# exceptions, constraints, syntax) is permanent: retrying it only repeats the failure.
# asyncpg's InternalClientError ("cannot switch to state 12; another operation is in
# progress") is what a pooled connection raises when its server died under a statement
# (seen in test_an_event_stream_outlives_a_short_outage, 1 run in 4): the connection is gone.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InternalClientError,
)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (*_TRANSIENT, asyncpg.PostgresError)


def is_transient(exc: BaseException) -> bool:
    """Whether the database failure `exc` may go away by itself (worth another try)."""
    return isinstance(exc, _TRANSIENT)


def is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, DATABASE_ERRORS)


def backoff_s(attempt: int, *, base_s: float = 0.05, cap_s: float = 5.0) -> float:
    """Exponential backoff with full jitter for the `attempt`-th retry (1-based)."""
    return random.uniform(base_s, min(cap_s, base_s * 2**attempt))


async def until_written(write: Callable[[], Awaitable[T]], what: str, **context: Any) -> T:
    """Run `write` until Postgres takes it: transient failures are retried with backoff (the
    caller keeps what it holds meanwhile), a permanent one is raised at once."""
    attempt = 0
    while True:
        try:
            return await write()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            log.warning("write_retry", what=what, attempt=attempt, error=repr(exc), **context)
        await asyncio.sleep(backoff_s(attempt))


async def fetchrow_retrying_aborts(pool: asyncpg.Pool, sql: str, *args: Any) -> asyncpg.Record | None:
    """One statement, tried again (with backoff, twice at most) if Postgres aborted it to
    break a deadlock or a serialization conflict. Lock order (jobs before executions, ids
    ascending) makes that rare; it must never be a 500. Other failures go to the caller:
    someone is waiting for an answer."""
    attempt = 0
    while True:
        try:
            return await pool.fetchrow(sql, *args)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            attempt += 1
            if attempt == 3:
                raise
            log.warning("deadlock_retried", attempt=attempt)
        await asyncio.sleep(backoff_s(attempt, base_s=0.005))
