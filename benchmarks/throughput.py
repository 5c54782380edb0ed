"""Throughput: the worker's processing rate on N no-op jobs already queued (inserted before
the clock starts), from the first claim to the last completion, read from the database's own
timestamps; with 1 and 2 worker processes; then the same workload through pgqueuer's
QueueManager (default batch settings) on the same Postgres. Separately, the submit path:
POST /jobs requests/s with concurrent clients.

    python -m benchmarks.throughput [--n 5000] [--submit-requests 2000] [--clients 32] [--no-peers]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from benchmarks.harness import (
    embedded_postgres,
    fresh_database,
    http_session,
    machine,
    percentiles,
    raise_fd_limit,
    sign_in,
    start_service,
    summary_line,
)
from runner.db import migrate

ENV = {"RUNNER_SHUTDOWN_GRACE_S": "0", "RUNNER_CONCURRENCY": "1000"}


async def _until(conn: asyncpg.Connection, sql: str, target: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while await conn.fetchval(sql) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(sql)
        await asyncio.sleep(0.05)


async def runner_rate(admin_dsn: str, n: int, workers: int, logdir: Path) -> float:
    dsn = await fresh_database(admin_dsn, f"bench_tp_{workers}")
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """WITH job AS (
                   INSERT INTO jobs (id, owner) SELECT gen_random_uuid(), '0xbench'
                   FROM generate_series(1, $1) RETURNING id)
               INSERT INTO executions (id, job_id, position, backend, input)
               SELECT gen_random_uuid(), id, 0, 'demo', '{"seconds": 0}' FROM job""", n)
        services = [await start_service(dsn, "worker", ENV, logdir) for _ in range(workers)]
        try:
            await _until(conn, "SELECT count(*) FROM jobs WHERE status = 'completed'", n)
        finally:
            for service in services:
                service.stop()
        span = await conn.fetchval("SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs")
        bad = await conn.fetchval("SELECT count(*) FROM jobs WHERE status <> 'completed'")
        assert bad == 0
        return n / float(span)
    finally:
        await conn.close()


async def pgqueuer_rate(admin_dsn: str, n: int, logdir: Path) -> float:
    from pgqueuer import AsyncpgDriver, Queries

    from benchmarks.peers import _stop, _worker

    dsn = await fresh_database(admin_dsn, "bench_tp_pgqueuer")
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        for start in range(0, n, 5000):
            size = min(5000, n - start)
            await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
        worker = await _worker("pgqueuer_worker.py", [dsn, "http://127.0.0.1:9"], logdir / "pgq-tp.log")
        try:
            await _until(conn, "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'", n)
        finally:
            _stop(worker)
        span = await conn.fetchval(
            """SELECT extract(epoch FROM max(created) FILTER (WHERE status = 'successful')
                                      - min(created) FILTER (WHERE status = 'picked'))
               FROM pgqueuer_log""")
        return n / float(span)
    finally:
        await conn.close()


async def submit_rate(admin_dsn: str, requests: int, clients: int, logdir: Path) -> dict[str, Any]:
    dsn = await fresh_database(admin_dsn, "bench_submit")
    env = {**ENV, "RUNNER_MAX_ACTIVE_JOBS_PER_WALLET": str(requests + 10)}
    api = await start_service(dsn, "api", env, logdir)  # no worker: the submit path alone
    try:
        async with http_session() as http:
            headers = await sign_in(http, api.base)
            body = {"executions": [{"backend": "demo", "input": {"seconds": 1}}]}
            latencies: list[float] = []
            queue = iter(range(requests))

            async def client() -> None:
                for _ in queue:
                    t0 = time.perf_counter()
                    async with http.post(f"{api.base}/jobs", json=body, headers=headers) as resp:
                        assert resp.status == 201, await resp.text()
                        await resp.read()
                    latencies.append((time.perf_counter() - t0) * 1000)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            elapsed = time.perf_counter() - started
        return {"rps": requests / elapsed, "latency": percentiles(latencies)}
    finally:
        api.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--submit-requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    raise_fd_limit()
    print(f"throughput: {args.n} no-op jobs queued before the clock starts")
    print(machine())
    results: dict[str, Any] = {}
    with embedded_postgres() as admin_dsn, tempfile.TemporaryDirectory() as logs:
        for workers in (1, 2):
            rate = await runner_rate(admin_dsn, args.n, workers, Path(logs))
            results[f"runner_{workers}_workers"] = rate
            summary_line(f"runner, {workers} worker process(es)", f"{rate:,.0f} jobs/s")
        if not args.no_peers:
            rate = await pgqueuer_rate(admin_dsn, args.n, Path(logs))
            results["pgqueuer"] = rate
            summary_line("pgqueuer QueueManager (defaults), 1 process", f"{rate:,.0f} jobs/s")
            summary_line("ratio runner (1 worker) / pgqueuer", f"{results['runner_1_workers'] / rate:.2f}")
        submit = await submit_rate(admin_dsn, args.submit_requests, args.clients, Path(logs))
        results["submit"] = submit
        summary_line(f"POST /jobs, {args.clients} concurrent clients", f"{submit['rps']:,.0f} requests/s")
        summary_line("POST /jobs latency", f"p50={submit['latency']['p50']:.2f} ms  p99={submit['latency']['p99']:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(results))


if __name__ == "__main__":
    uvloop.run(main())  # the measuring client costs less; the same for every system measured
