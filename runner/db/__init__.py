"""Postgres: the pool (pool), the embedded server (embedded), migrations, the LISTEN
connection (listener), the one classification of database errors (errors), and batched
writes (batch). It knows nothing of the cancel path or the worker, which use it."""

from runner.db.embedded import EmbeddedPostgres, resolve_dsn
from runner.db.errors import (
    DATABASE_ERRORS,
    backoff_s,
    fetchrow_retrying_aborts,
    is_database_error,
    is_transient,
    until_written,
)
from runner.db.migrations import apply_migrations, load_migrations, migrate
from runner.db.pool import connect, create_pool

__all__ = [
    "DATABASE_ERRORS",
    "EmbeddedPostgres",
    "apply_migrations",
    "backoff_s",
    "connect",
    "create_pool",
    "fetchrow_retrying_aborts",
    "is_database_error",
    "is_transient",
    "load_migrations",
    "migrate",
    "resolve_dsn",
    "until_written",
]
