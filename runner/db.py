"""Postgres: the asyncpg pool, the embedded server (pgserver), and the migration runner."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import structlog

from runner.errors import ConfigError, MigrationError

log = structlog.get_logger("runner.db")

T = TypeVar("T")

# pg_advisory_lock key held while migrating, so instances may start together.
MIGRATION_LOCK_KEY = 0x72756E6E65720001
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class EmbeddedPostgres:
    """The pgserver-managed Postgres used when DATABASE_URL is unset; data is kept across runs."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "pg").resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to) the server; blocking: call it from a thread."""
        with warnings.catch_warnings():
            # platformdirs warns about XDG_RUNTIME_DIR on servers; pgserver copes without it.
            warnings.simplefilter("ignore")
            from pgserver import get_server  # type: ignore[attr-defined]

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._forget_dead_handles()
        try:
            self._server = get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:  # pgserver raises bare exceptions with the server's log
            raise ConfigError(f"embedded Postgres in {self.pgdata} failed to start: {exc}") from exc
        dsn: str = self._server.get_uri()
        log.info("embedded_postgres_started", pgdata=str(self.pgdata))
        return dsn

    def _forget_dead_handles(self) -> None:
        """pgserver counts the processes using a server in a file and stops it when the last
        one exits; a process that was killed never takes itself off, and the server would
        then outlive every later run. Take off the ones that are gone (under pgserver's own
        inter-process lock), so the next clean stop of the last live user stops it."""
        import psutil
        from pgserver.postgres_server import PostgresServer
        from pgserver.utils import DiskList

        handles = self.pgdata / ".handle_pids.json"
        if not handles.exists():
            return
        with PostgresServer._lock:
            listed = DiskList(handles)
            pids = listed.get()
            alive = [pid for pid in pids if psutil.pid_exists(pid)]
            if alive != pids:
                listed.put(alive)
                log.info("embedded_postgres_handles_pruned", gone=sorted(set(pids) - set(alive)))

    def stop(self) -> None:
        """Release our handle: the server stops when no other process holds one."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


# Postgres errors, classified once. Transient: the connection or the server went away, or
# Postgres aborted the statement for a reason of its own (deadlock, serialization, a
# cancelled query, no room) -- the same statement may succeed later. Everything else (data
# exceptions, constraints, syntax) is permanent: retrying it only repeats the failure.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError, asyncpg.DeadlockDetectedError, asyncpg.SerializationError,
    asyncpg.InsufficientResourcesError,
)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (*_TRANSIENT, asyncpg.PostgresError)


def is_transient(exc: BaseException) -> bool:
    """Whether the database failure `exc` may go away by itself (worth another try)."""
    return isinstance(exc, _TRANSIENT)


def is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, DATABASE_ERRORS)


def backoff_s(attempt: int, *, base_s: float = 0.05, cap_s: float = 5.0) -> float:
    """Exponential backoff with full jitter for the `attempt`-th retry (1-based)."""
    return random.uniform(base_s, min(cap_s, base_s * 2 ** attempt))


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


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def connect(dsn: str, application_name: str = "runner") -> asyncpg.Connection:
    """One connection with the runner's codecs (the listener's, and one-off tools')."""
    conn = await asyncpg.connect(dsn, server_settings={"application_name": application_name},
                                 timeout=CONNECT_TIMEOUT_S)
    await _init_connection(conn)
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections carry no session state: no SET, LISTEN, session-level advisory lock
    or cursor outside a transaction (the listener and migrations have their own
    connections). So a release needs no RESET ALL / UNLISTEN * round trip, which would
    otherwise follow every query before its result reaches the caller. (asyncpg still rolls
    back a transaction left open.)"""


# No wait on the pool is unbounded: a statement (the longest are a cancel-all chunk and a
# retention batch, about a second each) gives up after COMMAND_TIMEOUT_S, and opening a
# connection after CONNECT_TIMEOUT_S -- a wedged or half-open server fails like a down one.
COMMAND_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0


async def create_pool(dsn: str, size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=min(size, 2),
        max_size=size,
        command_timeout=COMMAND_TIMEOUT_S,
        timeout=CONNECT_TIMEOUT_S,
        init=_init_connection,
        reset=_keep_session,
        server_settings={"application_name": "runner"},
    )


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    out = []
    for entry in resources.files("runner.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            out.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number: {[m.name for m in out]}")
    return out


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; return their names."""
    migrations = load_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {
            r["version"]: r for r in await conn.fetch("SELECT * FROM schema_migrations")
        }
        done = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} was changed after it was applied "
                        "(checksum differs); add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version, migration.name, migration.checksum,
                )
            log.info("migration_applied", migration=migration.name)
            done.append(migration.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def migrate(dsn: str) -> list[str]:
    conn = await connect(dsn)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


async def resolve_dsn(
    database_url: str | None, data_dir: Path
) -> tuple[str, EmbeddedPostgres | None]:
    """The DSN to use, starting the embedded server when no DATABASE_URL is set."""
    if database_url:
        return database_url, None
    embedded = EmbeddedPostgres(data_dir)
    dsn = await asyncio.to_thread(embedded.start)
    return dsn, embedded
