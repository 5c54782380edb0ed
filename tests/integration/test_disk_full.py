"""The embedded Postgres on a disk that fills up: Postgres stops for good (a WAL write
fails, then so does its recovery); once there is room again the service starts it again
by itself. A real small disk: a tmpfs mounted for the test (root only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.client import Api
from tests.integration.test_faults import _postgres_running_on, until_status
from tests.procs import ServeProcess

DISK_MB = 200


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=1777", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        reason = f"a tmpfs cannot be mounted here (needs root): {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield disk
    finally:
        for proc in _postgres_running_on((disk / "data" / "pg").resolve()):
            proc.kill()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of the disk."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 1):  # down to the last byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


async def test_the_embedded_postgres_is_started_again_once_its_full_disk_has_room(
    small_disk: Path, http: aiohttp.ClientSession
) -> None:
    serve = await ServeProcess(None, env_extra={"RUNNER_DATA_DIR": str(small_disk / "data")}).start()
    try:
        api = await Api.signed_in(http, serve.base_url)
        first = await api.submit({"backend": "demo", "input": {"seconds": 0}})
        await api.until(first["id"], "completed")

        pgdata = (small_disk / "data" / "pg").resolve()
        filler = await asyncio.to_thread(_fill, small_disk)
        # Postgres gives up when its WAL needs a new segment on the full disk (a heap that
        # cannot grow is only an error): WAL records and segment switches until it does.
        conn = await asyncpg.connect(f"postgresql://postgres:@/postgres?host={pgdata}")
        with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            for _ in range(64):
                await conn.execute(
                    "SELECT pg_logical_emit_message(false, 'fill', 'x'); SELECT pg_switch_wal()"
                )
        with contextlib.suppress(Exception):
            await conn.close(timeout=2)
        for _ in range(300):  # Postgres' processes end one after the other
            if not _postgres_running_on(pgdata):
                break
            await asyncio.sleep(0.1)
        assert not _postgres_running_on(pgdata), "Postgres survived a full disk"
        await until_status(http, serve.base_url + "/readyz", 503, timeout=30)

        filler.unlink()  # room again
        await until_status(http, serve.base_url + "/readyz", 200, timeout=90)
        later = await api.submit({"backend": "demo", "input": {"seconds": 0}})
        assert (await api.until(later["id"], "completed", timeout=30))["status"] == "completed"
        await serve.wait_log("embedded_postgres_restarted")
    finally:
        await serve.stop()
