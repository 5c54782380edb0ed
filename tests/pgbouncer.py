"""A real PgBouncer (Debian's `pgbouncer`) in front of the test Postgres, in the pool mode a
test asks for, on a free loopback port; stopped when the test ends.

Without the binary the tests that need it are skipped with the reason, except under CI
(`CI` set), where a missing PgBouncer is a failure: .ci/run installs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest

from tests.client import free_port

NAMES = ("pgbouncer", "/usr/sbin/pgbouncer")


def pgbouncer_path() -> str:
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    reason = "no PgBouncer for the pooler tests: `apt-get install pgbouncer`"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _server_of(dsn: str) -> tuple[str, int, str]:
    """(host or Unix socket directory, port, user) of the test Postgres."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "127.0.0.1"
    return host, int(query.get("port") or parts.port or 5432), parts.username or "postgres"


def _run_as(host: str) -> list[str]:
    """PgBouncer refuses to run as root: as root, run it as the user that owns the database's
    socket directory (the embedded Postgres runs as `pgserver`), which can reach it."""
    if os.geteuid() != 0:
        return []
    owner = os.stat(host).st_uid if host.startswith("/") else 0
    name = pwd.getpwuid(owner).pw_name if owner != 0 else "nobody"
    return ["-u", name]


def through(dsn: str, port: int) -> str:
    """The same database, reached through the bouncer on `port`."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}", query=""))


@contextlib.asynccontextmanager
async def pgbouncer(dsn: str, pool_mode: str) -> AsyncIterator[str]:
    """PgBouncer in `pool_mode` in front of `dsn`'s server; yields `dsn` through it."""
    binary = pgbouncer_path()
    host, port, user = _server_of(dsn)
    listen = free_port()
    with tempfile.TemporaryDirectory(prefix="runner-pgbouncer-") as tmp:
        os.chmod(tmp, 0o755)  # readable by the user it switches to
        ini = Path(tmp) / "pgbouncer.ini"
        ini.write_text(f"""[databases]
* = host={host} port={port} user={user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = any
pool_mode = {pool_mode}
max_client_conn = 500
default_pool_size = 40
ignore_startup_parameters = extra_float_digits,options
""")
        ini.chmod(0o644)
        proc = await asyncio.create_subprocess_exec(
            binary,
            *_run_as(host),
            str(ini),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        seen: list[str] = []
        drain: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(30):
                # Ready once it says it listens (its log goes to stderr).
                while not any("process up" in line for line in seen):
                    raw = await proc.stderr.readline()
                    if not raw:
                        raise AssertionError("pgbouncer exited:\n" + "".join(seen))
                    seen.append(raw.decode(errors="replace"))
            drain = asyncio.create_task(_drain(proc.stderr))
            yield through(dsn, listen)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
            if drain is not None:
                await drain


async def _drain(stream: asyncio.StreamReader) -> None:
    """Keep reading its log, so that a full pipe never blocks it."""
    while await stream.readline():
        pass
