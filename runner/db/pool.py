"""The asyncpg pool and single connections, with the runner's JSON codecs and time limits."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import asyncpg

from runner import jsontext


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=jsontext.dumps, decoder=jsontext.loads, schema="pg_catalog"
        )
    # Every statement here is prepared once and run many times, as index lookups. Left to
    # choose, Postgres re-plans the cancel-all on every call once the tables hold history
    # (0.35 ms, a third of its time): its generic estimate of a wallet's rows is a thousand,
    # a new wallet's custom one a few (benchmarks/README.md). A SET, not a startup
    # parameter, so that poolers pass it; the pool's reset keeps the session's settings.
    await conn.execute("SET plan_cache_mode = force_generic_plan")


async def connect(dsn: str, application_name: str = "runner") -> asyncpg.Connection:
    """One connection with the runner's codecs (the listener's, and one-off tools')."""
    conn = await asyncpg.connect(
        dsn, server_settings={"application_name": application_name}, timeout=CONNECT_TIMEOUT_S
    )
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


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for a message: host[:port]/database, never the user's password."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or dict(parse_qsl(parts.query)).get("host", "") or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "DATABASE_URL (not a valid postgresql:// URL)"
    if parts.scheme not in ("postgres", "postgresql"):
        return "DATABASE_URL (not a postgresql:// URL)"
    return f"{host}{port}{parts.path or ''}"
