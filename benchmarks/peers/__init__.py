"""The same cancel-latency measurement for procrastinate and pgqueuer (the `bench` extra):
N jobs each holding an HTTP call to the fake GPU endpoint, cancelled one at a time through
each library's own cancel API, from the call to the endpoint seeing the connection close.

Each peer is an async context manager: it starts the worker with N jobs in flight and yields
`cancel(i)`, which cancels job i and returns the milliseconds until its connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg

from benchmarks.harness import FakeGpu, fresh_database

PEERS = Path(__file__).resolve().parent

CancelOne = Callable[[int], Awaitable[float]]


async def _worker(script: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    stderr = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(PEERS / script), *args], stdout=subprocess.PIPE, stderr=stderr
    )
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if line.strip() != b"ready":
        raise RuntimeError(f"{script} did not start: {log.read_text()[-2000:]}")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.asynccontextmanager
async def procrastinate_running(admin_dsn: str, n: int, logdir: Path) -> AsyncIterator[CancelOne]:
    import procrastinate

    fake = FakeGpu()
    await fake.start()
    dsn = await fresh_database(admin_dsn, "bench_procrastinate")
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        worker = await _worker(
            "procrastinate_worker.py", [dsn, fake.url, str(n + 10)], logdir / "procrastinate.log"
        )
        try:
            deferrer = app.configure_task("hold")
            ids = [await deferrer.defer_async(key=str(i)) for i in range(n)]
            await fake.wait_open(n)

            async def cancel(i: int) -> float:
                closed = fake.close_of(str(i))
                t0 = time.perf_counter()
                assert await app.job_manager.cancel_job_by_id_async(ids[i], abort=True)
                return (await asyncio.wait_for(closed, 60) - t0) * 1000

            yield cancel
        finally:
            _stop(worker)
            await fake.stop()


@contextlib.asynccontextmanager
async def pgqueuer_running(admin_dsn: str, n: int, logdir: Path) -> AsyncIterator[CancelOne]:
    from pgqueuer import AsyncpgDriver, Queries

    fake = FakeGpu()
    await fake.start()
    dsn = await fresh_database(admin_dsn, "bench_pgqueuer")
    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    worker = await _worker("pgqueuer_worker.py", [dsn, fake.url], logdir / "pgqueuer.log")
    try:
        ids = await queries.enqueue(["hold"] * n, [str(i).encode() for i in range(n)], [0] * n)
        await fake.wait_open(n)

        async def cancel(i: int) -> float:
            closed = fake.close_of(str(i))
            t0 = time.perf_counter()
            await queries.mark_job_as_cancelled([ids[i]])
            return (await asyncio.wait_for(closed, 60) - t0) * 1000

        yield cancel
    finally:
        _stop(worker)
        await conn.close()
        await fake.stop()


PEER_RUNNERS = {"procrastinate": procrastinate_running, "pgqueuer": pgqueuer_running}


async def run_peers(admin_dsn: str, n: int, logdir: Path) -> dict[str, list[float]]:
    """Each peer on its own, one after the other."""
    results = {}
    for name, running in PEER_RUNNERS.items():
        async with running(admin_dsn, n, logdir) as cancel:
            results[name] = [await cancel(i) for i in range(n)]
    return results
