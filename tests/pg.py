"""Test databases: one embedded Postgres (or TEST_DATABASE_URL), a migrated template,
a fresh copy per test."""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


class TestPostgres:
    """Owns the server for the session and hands out databases copied from a template."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._server: Any = None
        self.admin_dsn = ""
        self.template = f"runner_template_{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        url = os.environ.get("TEST_DATABASE_URL")
        if url:
            self.admin_dsn = url
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
        self._server = pgserver.get_server(self.workdir / "pg", cleanup_mode="delete")
        self.admin_dsn = self._server.get_uri()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create_template(self) -> None:
        from runner.db import migrate

        await self._admin(f'CREATE DATABASE "{self.template}"')
        await migrate(with_database(self.admin_dsn, self.template))

    async def drop_template(self) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')

    async def create_database(self, *, migrated: bool = True) -> tuple[str, str]:
        name = f"runner_test_{uuid.uuid4().hex[:12]}"
        template = f' TEMPLATE "{self.template}"' if migrated else ""
        await self._admin(f'CREATE DATABASE "{name}"{template}')
        return name, with_database(self.admin_dsn, name)

    async def drop_database(self, name: str) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class StoppablePostgres:
    """A Postgres server of a test's own, which the test stops and starts (an outage) without
    disturbing the session's shared one. Its DSN stays the same across restarts (the same
    Unix socket directory), as a real database's address would."""

    def __init__(self, workdir: Path) -> None:
        self.pgdata = workdir / "pg"
        self._server: Any = None
        self.dsn = ""

    def start(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
        if self._server is None:
            self._server = pgserver.get_server(self.pgdata, cleanup_mode="delete")
        else:
            with self._server._lock:
                self._server.ensure_postgres_running()
        self.dsn = self._server.get_uri()
        return self.dsn

    def stop(self) -> None:
        """Stop the server now (fast shutdown: connections are cut, as in a crash or failover)."""
        from pgserver import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._server.system_user)

    def backend_pids(self, application_name: str) -> list[int]:
        """Server processes of connections with this application_name (from their titles)."""
        import psutil

        return [
            p.pid
            for p in psutil.process_iter(attrs=["cmdline"])
            if p.info["cmdline"]
            and any(application_name in part for part in p.info["cmdline"])
            and any(str(self.pgdata) in " ".join(q.cmdline()) for q in [p.parent()] if q)
        ]

    def cleanup(self) -> None:
        if self._server is not None:
            self._server.cleanup()
