"""Throughput: the worker's processing rate on N no-op jobs already queued (inserted before
the clock starts), from the first claim to the last completion, read from the database's own
timestamps; and the same workload through pgqueuer's QueueManager (default batch settings)
on the same Postgres. The two alternate for --repeat rounds (ours first in odd rounds,
pgqueuer first in even ones), as the machine's speed drifts; then ours with 2 worker
processes. Separately, the submit path: POST /jobs requests/s with concurrent clients.

    python -m benchmarks.throughput [--n 20000] [--repeat 3] [--submit-requests 2000]
        [--clients 32] [--no-peers] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from benchmarks.harness import (
    embedded_postgres,
    fresh_database,
    host_cpu,
    http_session,
    machine,
    percentiles,
    raise_fd_limit,
    sign_in,
    start_service,
    steal_line,
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
               SELECT gen_random_uuid(), id, 0, 'demo', '{"seconds": 0}' FROM job""",
            n,
        )
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
               FROM pgqueuer_log"""
        )
        return n / float(span)
    finally:
        await conn.close()


async def submit_rate(admin_dsn: str, requests: int, clients: int, logdir: Path) -> dict[str, Any]:
    dsn = await fresh_database(admin_dsn, "bench_submit")
    env = {
        **ENV,
        "RUNNER_MAX_ACTIVE_JOBS_PER_WALLET": str(requests + 10),
        "RUNNER_MAX_SUBMITS_PER_MINUTE": str(100 * requests + 1000),
    }
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--submit-requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    raise_fd_limit()
    print(f"throughput: {args.n} no-op jobs queued before the clock starts")
    print(machine())
    results: dict[str, Any] = {"runner_1_worker": [], "pgqueuer": []}
    with embedded_postgres() as admin_dsn, tempfile.TemporaryDirectory() as logs:
        for round_no in range(args.repeat):
            print(f"-- round {round_no + 1} of {args.repeat}")
            order = ["runner_1_worker"] if args.no_peers else ["runner_1_worker", "pgqueuer"]
            for name in order if round_no % 2 == 0 else order[::-1]:
                host = host_cpu()
                rate = await (
                    runner_rate(admin_dsn, args.n, 1, Path(logs))
                    if name == "runner_1_worker"
                    else pgqueuer_rate(admin_dsn, args.n, Path(logs))
                )
                results[name].append(rate)
                label = (
                    "runner, 1 worker process"
                    if name == "runner_1_worker"
                    else "pgqueuer QueueManager (defaults), 1 process"
                )
                summary_line(
                    label, f"{rate:,.0f} jobs/s  (CPU stolen by the host: {steal_line(host, host_cpu())})"
                )
            if not args.no_peers:
                summary_line(
                    "ratio runner / pgqueuer",
                    f"{results['runner_1_worker'][-1] / results['pgqueuer'][-1]:.2f}",
                )
        if not args.no_peers:
            ratios = [
                ours / theirs
                for ours, theirs in zip(results["runner_1_worker"], results["pgqueuer"], strict=True)
            ]
            summary_line("ratios per round", ", ".join(f"{r:.2f}" for r in ratios))
            summary_line("median ratio", f"{statistics.median(ratios):.2f}")
        rate = await runner_rate(admin_dsn, args.n, 2, Path(logs))
        results["runner_2_workers"] = rate
        summary_line("runner, 2 worker processes", f"{rate:,.0f} jobs/s")
        submit = await submit_rate(admin_dsn, args.submit_requests, args.clients, Path(logs))
        results["submit"] = submit
        summary_line(f"POST /jobs, {args.clients} concurrent clients", f"{submit['rps']:,.0f} requests/s")
        summary_line(
            "POST /jobs latency",
            f"p50={submit['latency']['p50']:.2f} ms  p99={submit['latency']['p99']:.2f} ms",
        )
    if args.json:
        args.json.write_text(json.dumps(results))


if __name__ == "__main__":
    uvloop.run(main())  # the measuring client costs less; the same for every system measured
