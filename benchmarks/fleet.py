"""A fleet on one Postgres: 1 API instance and N-1 workers (real `runner serve` processes),
every connection on loopback.

    python -m benchmarks.fleet [--instances 2,8,16] [--cancels 300] [--rounds 1] [--knee-instances 16]
        [--step-s 4] [--cancel-all 8000] [--parts cancel,knee,knee_fleet,cancel_all] [--logs DIR]

- cancel: `--cancels` jobs in flight, held by whichever worker claimed each (a job anywhere),
  cancelled one at a time through the API instance: from the request leaving the client to
  the fake GPU endpoint seeing that job's connection close (the NOTIFY path across
  instances), p50/p99 per fleet size; with `--rounds` R, R rounds of every size in turn, and
  the p99 over all of each size's samples.
- knee: with the fleet idle-listening (its listeners connected, its workers woken as usual),
  a load generator runs the service's own job statements -- submit, claim, result -- at a
  paced rate (open loop, on a pool of 20 connections) for a bench backend no instance has,
  rising in steps of `--step-s` seconds, and reports the commits per second at which a
  statement's p99 (queueing for a connection included) crosses 50 ms: with notifications as
  the service sends them, and with every notification turned off (the floor: pg_notify
  shadowed by a no-op, first on the database's search_path, for every connection).
- knee_fleet: the same, but the fleet's workers have the bench backend (demo, zero seconds)
  and run the jobs themselves -- each submit may wake every worker -- and the load is
  submits alone.
- cancel_all: `--cancel-all` jobs of one wallet in flight over 4 workers, then over 1, and
  one POST /jobs/cancel: until every connection closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from benchmarks.cancel_latency import _submit_all
from benchmarks.harness import (
    FakeGpu,
    RawHttp,
    Service,
    embedded_postgres,
    fmt,
    fresh_database,
    host_cpu,
    http_session,
    log_directory,
    machine,
    percentiles,
    raise_fd_limit,
    sign_in,
    start_service,
    steal_line,
    summary_line,
)

KNEE_P99_MS = 50.0
BATCH = 4  # jobs per claim and per write of results, in the knee's load
BENCH_BACKEND = "bench"  # the knee's jobs: no instance has it, so none claims them
# Submits take a per-wallet lock until their commit: the load's jobs come from many wallets.
OWNERS = [f"0x{i:040x}" for i in range(1, 1001)]


def _env(fake: FakeGpu, jobs: int) -> dict[str, str]:
    return {
        "RUNNER_CONCURRENCY": str(jobs + 100),
        "RUNNER_MAX_ACTIVE_JOBS_PER_WALLET": str(jobs + 100),
        "RUNNER_MAX_SUBMITS_PER_MINUTE": str(100 * jobs + 1000),
        "RUNNER_SHUTDOWN_GRACE_S": "0",
        "RUNNER_DB_POOL_SIZE": "5",  # 16 instances x 20 would be most of max_connections
        "RUNNER_BACKENDS_TOML": f'[backends.gpu]\nkind = "http"\nurl = "{fake.url}/hold"\n',
    }


@contextlib.asynccontextmanager
async def fleet(dsn: str, size: int, env: dict[str, str], logdir: Path) -> AsyncIterator[list[Service]]:
    """1 API instance and size-1 workers, started together; stopped on exit."""
    services: list[Service] = []
    try:
        services.append(await start_service(dsn, "api", env, logdir))
        for first in range(0, size - 1, 4):  # a few at a time: 15 starting at once take minutes here
            started = await asyncio.gather(
                *(start_service(dsn, "worker", env, logdir) for _ in range(first, min(first + 4, size - 1))),
                return_exceptions=True,
            )
            services.extend(s for s in started if isinstance(s, Service))
            failed = [s for s in started if not isinstance(s, Service)]
            if failed:
                raise failed[0]
        yield services
    finally:
        for service in services:
            service.proc.terminate()
        for service in services:
            service.stop()


async def _spread(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT count(*) AS n FROM jobs WHERE status = 'running' GROUP BY worker_id")
    finally:
        await conn.close()
    counts = sorted((r["n"] for r in rows), reverse=True)
    return f"{len(counts)} workers hold {counts}"


async def cancel_latency(admin_dsn: str, size: int, n: int, logdir: Path) -> list[float]:
    fake = FakeGpu()
    await fake.start()
    dsn = await fresh_database(admin_dsn, f"bench_fleet_cancel_{size}")
    try:
        async with fleet(dsn, size, _env(fake, n), logdir) as services, http_session() as http:
            api = services[0]
            headers = await sign_in(http, api.base)
            jobs = await _submit_all(http, api.base, headers, n)
            await fake.wait_open(n)
            summary_line(f"  {size} instances: jobs in flight", await _spread(dsn))
            samples = []
            host_before = host_cpu()
            async with RawHttp(api.base, headers) as raw:
                for job in jobs:
                    closed = fake.close_of(job["executions"][0]["id"])
                    post = raw.request("POST", f"/jobs/{job['id']}/cancel")
                    t0 = time.perf_counter()
                    status, body = await post()
                    assert status == 200, body
                    closed_at = closed.result() if closed.done() else await asyncio.wait_for(closed, 60)
                    samples.append((closed_at - t0) * 1000)
            summary_line(f"  {size} instances: request -> connection closed", fmt(percentiles(samples)))
            summary_line(f"  {size} instances: CPU stolen by the host", steal_line(host_before, host_cpu()))
            return samples
    finally:
        await fake.stop()


async def _quiet(dsn: str) -> None:
    """The floor: every pg_notify of every connection to this database -- the service's and
    the load's, in statements or sent after them -- is a no-op found first on the path. The
    schema is migrated first (with that path, new tables would go into the no-op's schema)."""
    from runner.db import migrate

    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("""CREATE SCHEMA bench_quiet;
            CREATE FUNCTION bench_quiet.pg_notify(text, text) RETURNS void LANGUAGE sql AS 'SELECT'""")
        await conn.execute(
            f'ALTER DATABASE "{await conn.fetchval("SELECT current_database()")}" '
            "SET search_path = bench_quiet, public, pg_catalog"
        )
    finally:
        await conn.close()


class Load:
    """The service's job statements, as a worker and the API run them, on a pool of its own."""

    def __init__(self, pool: asyncpg.Pool, notes: Any) -> None:
        from runner.worker import records, store

        self.pool, self.store, self.notes = pool, store, notes
        self.capacity = records.Capacity(backends=[BENCH_BACKEND], limits={})
        # The statement functions take the instance's notifier where the tree has one.
        self.kw = {"notifier": notes} if "notifier" in inspect.signature(store.claim).parameters else {}
        self.claimed: list[Any] = []
        self.submitted = self.claims = 0

    async def submit(self) -> None:
        from runner import jobs

        kw = {"notifier": self.notes} if "notifier" in inspect.signature(jobs.submit).parameters else {}
        job_input = {"seconds": 0}  # the demo backend, where the fleet runs the jobs
        self.submitted += 1
        await jobs.submit(
            self.pool,
            owner=OWNERS[self.submitted % len(OWNERS)],
            executions=[jobs.NewExecution(BENCH_BACKEND, job_input)],
            timeout_s=None,
            metadata={},
            max_active=10**9,
            per_minute=10**9,
            **kw,
        )

    async def claim(self) -> None:
        # A claim renews its worker's lease row: as many pseudo-workers as claims in flight,
        # so that they do not queue on one row (a real worker claims from one loop).
        self.claims += 1
        worker = f"bench-{self.claims % 20}"
        jobs = await self.store.claim(
            self.pool, worker_id=worker, limit=BATCH, lease_s=600, capacity=self.capacity, **self.kw
        )
        self.claimed.extend((worker, job) for job in jobs)

    async def result(self) -> None:
        if not self.claimed:
            return
        worker = self.claimed[-1][0]
        done = [job for w, job in self.claimed if w == worker][:BATCH]
        self.claimed = [(w, job) for w, job in self.claimed if job not in done]
        await self.store.write_results(
            self.pool,
            [
                self.records.ExecutionResult(job.id, job.executions[0].id, "completed", {"ok": True}, None, 1)
                for job in done
            ],
            worker,
            **self.kw,
        )


async def _commits(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        n: int = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return n
    finally:
        await conn.close()


async def _step(
    load: Load,
    rate: float,
    seconds: float,
    *,
    submits_only: bool = False,
) -> tuple[dict[str, float], float]:
    """Statements at `rate` per second, paced open loop: BATCH submits, then a claim of up to
    BATCH jobs and a write of up to BATCH results (as a worker claims and writes, batched);
    `submits_only`: submits alone (the fleet's workers run the jobs). Returns their
    latencies' percentiles and the rate achieved."""
    ops = [load.submit] if submits_only else [load.submit] * BATCH + [load.claim, load.result]
    samples: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def timed(op: Any, planned: float) -> None:
        await op()
        samples.append((time.perf_counter() - planned) * 1000)  # late starts count

    began = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        planned = began + i / rate
        delay = planned - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(timed(ops[i % len(ops)], planned))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return percentiles(samples), total / (time.perf_counter() - began)


async def knee(
    admin_dsn: str, size: int, step_s: float, logdir: Path, *, fleet_runs: bool = False
) -> dict[str, float]:
    """`fleet_runs`: the fleet's workers have the bench backend (`demo`, zero seconds) and
    run the jobs -- every worker may claim each; the load is submits alone."""
    fake = FakeGpu()
    await fake.start()
    rates = [25, 50, 100, 150, 200, 300, 400, 500, 650, 800, 1000, 1250, 1500, 2000]
    found: dict[str, float] = {}
    kind = "fleet runs the jobs" if fleet_runs else "no instance has the backend"
    env = _env(fake, 10**6)
    if fleet_runs:
        env["RUNNER_BACKENDS_TOML"] += f'[backends.{BENCH_BACKEND}]\nkind = "demo"\n'
    try:
        for mode in ("notify", "quiet"):
            dsn = await fresh_database(admin_dsn, f"bench_fleet_knee_{size}_{mode}_{int(fleet_runs)}")
            if mode == "quiet":
                await _quiet(dsn)
            async with fleet(dsn, size, env, logdir):
                from runner.db import pool as runner_pool

                pool = await asyncpg.create_pool(
                    dsn,
                    min_size=20,
                    max_size=20,
                    init=runner_pool._init_connection,
                    server_settings={"application_name": "bench-load"},
                )
                notes = await _notifier(pool, quiet=mode == "quiet")
                try:
                    load = Load(pool, notes)
                    await _step(load, 20, 1.0, submits_only=fleet_runs)  # warm: connections, statements
                    last_ok = 0.0
                    for rate in rates:
                        before, began = await _commits(dsn), time.perf_counter()
                        stats, achieved = await _step(load, rate, step_s, submits_only=fleet_runs)
                        commits = (await _commits(dsn) - before) / (time.perf_counter() - began)
                        summary_line(
                            f"  {size} instances, {mode}: {rate}/s offered",
                            f"{achieved:.0f}/s done, {commits:.0f} commits/s in all; {fmt(stats)}",
                        )
                        if stats["p99"] > KNEE_P99_MS or achieved < 0.9 * rate:
                            break
                        last_ok = rate
                    found[mode] = last_ok
                    summary_line(
                        f"  {size} instances, {mode} ({kind}): knee (p99 <= {KNEE_P99_MS:.0f} ms)",
                        f"{last_ok:.0f} {'submits' if fleet_runs else 'commits'}/s",
                    )
                finally:
                    if notes is not None and hasattr(notes, "close"):
                        await notes.close()
                    await pool.close()
    finally:
        await fake.stop()
    return found


async def _notifier(pool: asyncpg.Pool, *, quiet: bool) -> Any:
    """The instance's notifier (sends the hints after commit), where the tree has one."""
    try:
        from runner.db.notify import Notifier  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return Notifier(pool, enabled=not quiet)


async def cancel_all(admin_dsn: str, workers: int, n: int, logdir: Path) -> float:
    fake = FakeGpu()
    await fake.start()
    dsn = await fresh_database(admin_dsn, f"bench_fleet_cancel_all_{workers}")
    try:
        async with fleet(dsn, workers + 1, _env(fake, n), logdir) as services, http_session() as http:
            api = services[0]
            headers = await sign_in(http, api.base)
            sem = asyncio.Semaphore(64)

            async def submit(i: int) -> None:
                async with (
                    sem,
                    http.post(
                        f"{api.base}/jobs",
                        headers=headers,
                        json={"executions": [{"backend": "gpu", "input": {"i": i}}]},
                    ) as resp,
                ):
                    assert resp.status == 201, await resp.text()

            await asyncio.gather(*(submit(i) for i in range(n)))
            await fake.wait_open(n, timeout=600)
            summary_line(f"  {workers} worker(s): jobs in flight", await _spread(dsn))
            closes = [fake.close_of(key) for key in list(fake.opened)]
            t0 = time.perf_counter()
            async with http.post(
                f"{api.base}/jobs/cancel", headers=headers, json={"reason": "fleet"}
            ) as resp:
                body = await resp.json()
            answered = time.perf_counter() - t0
            done = await asyncio.wait_for(asyncio.gather(*closes), 120)
            last = (max(done) - t0) * 1000
            summary_line(
                f"  {workers} worker(s): POST /jobs/cancel answered",
                f"{answered * 1000:.0f} ms "
                f"({body['count']} jobs); every connection closed after {last:.0f} ms",
            )
            return last
    finally:
        await fake.stop()


async def cancel_rounds(admin_dsn: str, sizes: list[int], args: argparse.Namespace, logdir: Path) -> None:
    """`--rounds` rounds, each fleet size in turn within a round (drift on the machine falls
    on every size alike): each round's p99 ratio, then the p99 over every round's samples."""
    print(f"cancel latency, {args.cancels} jobs in flight, cancelled one at a time:")
    pooled: dict[int, list[float]] = {size: [] for size in sizes}
    ratios: dict[int, list[float]] = {size: [] for size in sizes}
    smallest = min(sizes)
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f" round {round_no} of {args.rounds}:")
        p99 = {}
        for size in sizes:
            samples = await cancel_latency(admin_dsn, size, args.cancels, logdir)
            pooled[size].extend(samples)
            p99[size] = percentiles(samples)["p99"]
        for size in sizes:
            ratios[size].append(p99[size] / p99[smallest])
            summary_line(f"cancel p99, {size} instances / {smallest}", f"{ratios[size][-1]:.2f}")
    if args.rounds > 1:
        print(f"all {args.rounds} rounds:")
        pooled_p99 = {size: percentiles(samples)["p99"] for size, samples in pooled.items()}
        for size in sizes:
            summary_line(f"  {size} instances: request -> connection closed", fmt(percentiles(pooled[size])))
        for size in sizes:
            each = ", ".join(f"{r:.2f}" for r in ratios[size])
            summary_line(
                f"cancel p99, {size} instances / {smallest}",
                f"{pooled_p99[size] / pooled_p99[smallest]:.2f} over all samples (rounds: {each})",
            )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", default="2,8,16")
    parser.add_argument("--cancels", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--knee-instances", default="16")
    parser.add_argument("--step-s", type=float, default=4.0)
    parser.add_argument("--cancel-all", type=int, default=8000)
    parser.add_argument("--parts", default="cancel,knee,knee_fleet,cancel_all")
    parser.add_argument("--logs", type=Path)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    raise_fd_limit()
    print("fleet: 1 API instance + N-1 workers on one Postgres, loopback")
    print(machine())
    with embedded_postgres() as admin_dsn, log_directory(args.logs) as logs:
        conn = await asyncpg.connect(admin_dsn)
        summary_line("Postgres", await conn.fetchval("SHOW server_version"))
        await conn.close()
        if "cancel" in parts:
            await cancel_rounds(admin_dsn, [int(s) for s in args.instances.split(",")], args, Path(logs))
        if "knee" in parts:
            print(f"notifying-commit knee: statements until p99 > {KNEE_P99_MS:.0f} ms:")
            for size in (int(s) for s in args.knee_instances.split(",")):
                found = await knee(admin_dsn, size, args.step_s, Path(logs))
                summary_line(
                    f"knee, {size} instances: notifying / floor",
                    f"{found['notify']:.0f} / {found['quiet']:.0f} commits/s",
                )
        if "knee_fleet" in parts:
            print(
                f"the same, the fleet's workers running the jobs: submits until p99 > {KNEE_P99_MS:.0f} ms:"
            )
            for size in (int(s) for s in args.knee_instances.split(",")):
                found = await knee(admin_dsn, size, args.step_s, Path(logs), fleet_runs=True)
                summary_line(
                    f"knee, {size} instances, fleet runs the jobs: notifying / floor",
                    f"{found['notify']:.0f} / {found['quiet']:.0f} submits/s",
                )
        if "cancel_all" in parts:
            print(f"cancel-all of {args.cancel_all} jobs of one wallet:")
            one = await cancel_all(admin_dsn, 1, args.cancel_all, Path(logs))
            four = await cancel_all(admin_dsn, 4, args.cancel_all, Path(logs))
            summary_line("cancel-all, 4 workers / 1 worker", f"{four / one:.2f}")


if __name__ == "__main__":
    uvloop.run(main())
