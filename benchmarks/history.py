"""History at scale: the hot statements on an empty database and on one holding a year of
history (by default 1,000,000 finished jobs of 1,000 wallets, each with an execution and
three audit events), side by side in one run, interleaved so that noise falls on both.

Measured through the daemon's own functions (no HTTP: what history changes is the
statements): submit, claim, cancel (a running job), cancel-all (10 active jobs), the first
page of GET /jobs for a wallet with 60 jobs, that page filtered (metadata, status and a
time range: issue #29), and a filtered cancel's dry run (10 active jobs, 5 match). Every
job carries metadata (`{"sweep": "sN"}`, 50 values), so the metadata index holds a million
entries. Then EXPLAIN of each hot statement on the history database, to show it uses an
index (the filtered ones for a wallet with a thousand jobs of history).

    python -m benchmarks.history [--jobs 1000000] [--rounds 300]
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import uvloop

from benchmarks.harness import embedded_postgres, fresh_database, machine, percentiles
from runner import jobs
from runner.cancel.canceller import Canceller
from runner.cancel.registry import JobContextManager
from runner.cancel.statements import CANCEL_JOB, cancel_matching, matching
from runner.db import create_pool, migrate
from runner.filters import JobFilter, where
from runner.metrics import Metrics
from runner.worker import records, store

WALLETS = 1000
CHUNK = 100_000
CAPACITY = records.Capacity(["demo"], {})


def wallet(i: int) -> str:
    return "0x" + f"{i:040x}"


async def fill(dsn: str, total: int) -> None:
    """A year of finished history: jobs spread over 365 days and WALLETS wallets."""
    conn = await asyncpg.connect(dsn)
    try:
        for start in range(0, total, CHUNK):
            n = min(CHUNK, total - start)
            began = time.perf_counter()
            await conn.execute(
                """WITH j AS (
                       INSERT INTO jobs (id, owner, status, created_at, started_at, finished_at,
                                         cancelled_at, cancelled_by, attempts, backends, metadata)
                       SELECT gen_random_uuid(), '0x' || lpad(to_hex(i % $3), 40, '0'),
                              CASE WHEN i % 10 = 0 THEN 'cancelled' WHEN i % 17 = 0 THEN 'failed'
                                   ELSE 'completed' END,
                              t, t, t + interval '30 seconds',
                              CASE WHEN i % 10 = 0 THEN t + interval '30 seconds' END,
                              CASE WHEN i % 10 = 0 THEN '0x' || lpad(to_hex(i % $3), 40, '0') END,
                              1, '{demo}', jsonb_build_object('sweep', 's' || (i % 50))
                       FROM generate_series($1::bigint, $1 + $2 - 1) i,
                            LATERAL (SELECT now() - interval '365 days' * random() AS t) tt
                       RETURNING id, status, created_at, finished_at),
                   e AS (
                       INSERT INTO executions (id, job_id, position, backend, input, status, attempts,
                                               started_at, finished_at, output)
                       SELECT gen_random_uuid(), id, 0, 'demo', '{"seconds": 1}', status, 1,
                              created_at, finished_at, '{"slept_s": 1}' FROM j)
                   INSERT INTO job_events (job_id, kind, actor, at, detail)
                   SELECT id, k, 'system', created_at, '{}'::jsonb FROM j,
                          unnest(ARRAY['submitted', 'started', status]) k""",
                start,
                n,
                WALLETS,
            )
            print(
                f"  history: {start + n:,} jobs ({time.perf_counter() - began:.1f} s for this chunk)",
                flush=True,
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


class Target:
    """One database and the daemon's parts that run the measured statements on it."""

    def __init__(self, name: str, pool: asyncpg.Pool) -> None:
        self.name = name
        self.pool = pool
        self.canceller = Canceller(
            pool,
            JobContextManager(),
            Metrics(),
            remote_cancel_backends=[],
            holder_grace_s=5.0,
            instance_id="bench",
        )
        self.samples: dict[str, list[float]] = {}
        # A wallet with 60 jobs in both databases: the first page of GET /jobs is as long in
        # each, so what differs is the history of others around it.
        self.lister = wallet(WALLETS + 1)

    async def prepare(self) -> None:
        for i in range(60):
            await self.submit(self.lister, {"sweep": f"s{i % 2}"})
        await self.canceller.cancel_all(self.lister, reason=None)

    async def timed(self, op: str, call: Callable[[], Awaitable[Any]]) -> Any:
        began = time.perf_counter()
        result = await call()
        self.samples.setdefault(op, []).append((time.perf_counter() - began) * 1000)
        return result

    async def submit(self, owner: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        job, _ = await jobs.submit(
            self.pool,
            owner=owner,
            executions=[jobs.NewExecution("demo", {"seconds": 1})],
            timeout_s=None,
            metadata=metadata or {},
            max_active=1_000_000,
            per_minute=1_000_000_000,
        )
        return dict(job)

    async def round(self, i: int) -> None:
        owner = wallet(i % WALLETS)
        await self.timed("submit", lambda: self.submit(owner))
        claimed = await self.timed(
            "claim",
            lambda: store.claim(self.pool, worker_id="bench-worker", limit=1, lease_s=60, capacity=CAPACITY),
        )
        for job in claimed:  # a running job, cancelled as a user would
            await self.timed(
                "cancel",
                lambda job=job: self.canceller.cancel_job(job.id, actor=job.owner, admin=False, reason=None),
            )
        await self.timed(
            "list",
            lambda: jobs.list_jobs(
                self.pool, owner=self.lister, job_filter=JobFilter(), limit=50, cursor=None, max_bytes=8 << 20
            ),
        )
        await self.timed(
            "list_filtered",
            lambda: jobs.list_jobs(
                self.pool, owner=self.lister, job_filter=LISTED, limit=50, cursor=None, max_bytes=8 << 20
            ),
        )
        bulk_owner = "0x" + uuid.uuid4().hex.ljust(40, "0")
        for n in range(10):
            await self.submit(bulk_owner, {"sweep": f"s{n % 2}"})
        found = await self.timed("dry_run", lambda: self.canceller.dry_run(bulk_owner, SWEEP))
        assert found.count == 5
        await self.timed(
            "cancel_all",
            lambda: self.canceller.cancel_all(bulk_owner, reason=None),
        )


# The filtered page: one sweep's cancelled jobs of the last year (the lister's: 30 of 60).
LISTED = JobFilter(
    statuses=("cancelled",),
    metadata={"sweep": "s1"},
    created_after=datetime.now(UTC) - timedelta(days=365),
)
SWEEP = JobFilter(metadata={"sweep": "s1"})


def _filtered(sql: str, job_filter: JobFilter, *args: Any) -> tuple[str, list[Any]]:
    values = list(args)
    return sql.replace("{where}", where(job_filter, values)), values


EXPLAINED = {
    "claim": None,  # built from store.claim's own text below
    "cancel": CANCEL_JOB,
    "cancel_all": cancel_matching("true"),
    "list": f"SELECT {jobs.JOB_COLUMNS} FROM jobs j WHERE j.owner = $1 ORDER BY j.created_at DESC, j.id DESC LIMIT 51",
}


async def explain(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        checks = {
            "list": (EXPLAINED["list"], [wallet(7)]),
            "cancel": (CANCEL_JOB, [uuid.uuid4(), wallet(7), None, False, [], 5.0]),
            "cancel_all": (
                cancel_matching("true"),
                [wallet(7), None, [], 5.0, 1000, "bench", {"bulk": True}],
            ),
            # The filters for a wallet with a thousand jobs of history.
            "list filtered": _filtered(
                f"SELECT {jobs.JOB_COLUMNS} FROM jobs j WHERE j.owner = $1 AND {{where}} "
                "ORDER BY j.created_at DESC, j.id DESC LIMIT 51",
                LISTED,
                wallet(7),
            ),
            "list by metadata": _filtered(
                f"SELECT {jobs.JOB_COLUMNS} FROM jobs j WHERE j.owner = $1 AND {{where}} "
                "ORDER BY j.created_at DESC, j.id DESC LIMIT 51",
                JobFilter(metadata={"sweep": "s7"}),
                wallet(7),
            ),
            "dry run": _filtered(matching("{where}"), SWEEP, wallet(7), 50),
            "cancel filtered": _filtered(
                cancel_matching("{where}"), SWEEP, wallet(7), None, [], 5.0, 1000, "bench", {"bulk": True}
            ),
            "quota": (
                "SELECT count(*) FROM jobs j WHERE j.owner = $1 AND j.status IN ('queued', 'running')",
                [wallet(7)],
            ),
            "claim candidates": ("SELECT DISTINCT owner FROM jobs WHERE status = 'queued'", []),
            "lease check": ("SELECT id FROM jobs WHERE status = 'running' AND worker_id = $1", ["bench"]),
            "retention": (
                "SELECT id FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') "
                "AND finished_at < now() - interval '30 days' ORDER BY finished_at LIMIT 500",
                [],
            ),
        }
        for name, (sql, args) in checks.items():
            await conn.execute("BEGIN")
            try:
                plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))
            finally:
                await conn.execute("ROLLBACK")
            scans = [
                line.strip().removeprefix("->").strip().split("  (")[0]
                for line in plan.splitlines()
                if "Scan" in line
            ]
            full = [
                s
                for s in scans
                if s.startswith(("Seq Scan on jobs", "Seq Scan on executions", "Seq Scan on job_events"))
            ]
            verdict = "index" if not full else "SEQUENTIAL SCAN"
            print(f"  explain {name:<18} {verdict}: {'; '.join(dict.fromkeys(scans))[:300]}")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    print(f"history at scale: {args.jobs:,} finished jobs against an empty database; {machine()}")
    with embedded_postgres() as admin:
        empty_dsn = await fresh_database(admin, "bench_empty")
        full_dsn = await fresh_database(admin, "bench_history")
        for dsn in (empty_dsn, full_dsn):
            await migrate(dsn)
        began = time.perf_counter()
        await fill(full_dsn, args.jobs)
        print(f"  filled in {time.perf_counter() - began:.0f} s")
        pools = [await create_pool(empty_dsn, 4), await create_pool(full_dsn, 4)]
        try:
            targets = [Target("empty", pools[0]), Target("history", pools[1])]
            for target in targets:
                await target.prepare()
            for warm in range(20):
                for target in targets:
                    await target.round(warm)
            for target in targets:
                target.samples.clear()
            for i in range(args.rounds):
                for target in targets if i % 2 == 0 else reversed(targets):
                    await target.round(i)
            print(
                f"{'operation':<12} {'empty p50/p99 (ms)':>22} {'history p50/p99 (ms)':>22}  ratio p50, p99"
            )
            for op in ("submit", "claim", "cancel", "cancel_all", "list", "list_filtered", "dry_run"):
                e = percentiles(targets[0].samples[op])
                h = percentiles(targets[1].samples[op])
                print(
                    f"{op:<12} {e['p50']:>10.3f} / {e['p99']:<9.3f} {h['p50']:>10.3f} / {h['p99']:<9.3f}"
                    f"  {h['p50'] / e['p50']:.2f}, {h['p99'] / e['p99']:.2f}"
                )
            await explain(pools[1])
        finally:
            for pool in pools:
                await pool.close()


if __name__ == "__main__":
    uvloop.run(main())
