"""The embedded Postgres (pgserver), used when DATABASE_URL is unset; data kept across runs."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import structlog

from runner.errors import ConfigError

log = structlog.get_logger("runner.db")


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

    def running(self) -> bool:
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info is not None and info.is_running()

    def restart(self) -> None:
        """Start the server again if it has stopped; blocking: call it from a thread."""
        from pgserver.postgres_server import PostgresServer

        assert self._server is not None
        with PostgresServer._lock:  # as pgserver itself starts it: one process at a time
            self._server.ensure_postgres_running()

    async def keep_running(self, every_s: float = 2.0) -> None:
        """Start the server again whenever it has stopped for good -- as it does after its
        disk filled up (a WAL write fails, and so does the recovery): nothing else would,
        and /readyz would answer 503 until someone restarted the service by hand. Retried
        with backoff until there is room again."""
        failures = 0
        while True:
            await asyncio.sleep(every_s if not failures else min(every_s * 2**failures, 60.0))
            if await asyncio.to_thread(self.running):
                failures = 0
                continue
            log.warning("embedded_postgres_down", pgdata=str(self.pgdata), attempt=failures + 1)
            try:
                await asyncio.to_thread(self.restart)
            except Exception as exc:  # pgserver raises bare errors: a full disk, most likely
                failures += 1
                log.warning("embedded_postgres_restart_failed", error=repr(exc)[:500], attempt=failures)
            else:
                failures = 0
                log.warning("embedded_postgres_restarted", pgdata=str(self.pgdata))

    def stop(self) -> None:
        """Release our handle: the server stops when no other process holds one."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


async def resolve_dsn(database_url: str | None, data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """The DSN to use, starting the embedded server when no DATABASE_URL is set."""
    if database_url:
        return database_url, None
    embedded = EmbeddedPostgres(data_dir)
    dsn = await asyncio.to_thread(embedded.start)
    return dsn, embedded
