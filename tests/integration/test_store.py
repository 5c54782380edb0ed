"""The worker's batched writes (runner.worker.store) on real Postgres: the result write that also
finishes the job, and the `finalize` that covers what it cannot see."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from runner import jobs
from runner.db import create_pool
from runner.worker import records, store

WORKER = "test-worker"
OWNER = "0x" + "ab" * 20
ALL = records.Capacity(["gpu"], {})


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, 4)
    yield pool
    await pool.close()


async def _claimed(pool: asyncpg.Pool, executions: int) -> records.ClaimedJob:
    await jobs.submit(
        pool,
        owner=OWNER,
        executions=[jobs.NewExecution("gpu", {"i": i}) for i in range(executions)],
        timeout_s=None,
        metadata={},
        max_active=100,
        per_minute=1000,
    )
    (job,) = await store.claim(pool, worker_id=WORKER, limit=1, lease_s=60, capacity=ALL)
    return job


def _result(job: records.ClaimedJob, index: int, status: str = "completed") -> records.ExecutionResult:
    return records.ExecutionResult(
        job.id,
        job.executions[index].id,
        status,
        {"n": index},
        error="boom" if status == "failed" else None,
        attempts=1,
    )


async def _trail(pool: asyncpg.Pool, job_id: uuid.UUID) -> list[tuple[str, int]]:
    """(kind, transaction id) of each event, in order."""
    rows = await pool.fetch(
        "SELECT kind, xmin::text::bigint AS tx FROM job_events WHERE job_id = $1 ORDER BY id", job_id
    )
    return [(r["kind"], r["tx"]) for r in rows]


async def test_the_last_result_finishes_the_job_in_the_same_commit(pool: asyncpg.Pool) -> None:
    job = await _claimed(pool, 2)
    assert await store.write_results(pool, [_result(job, 0)], WORKER) == [(True, None)]
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job.id) == "running"
    assert await store.write_results(pool, [_result(job, 1, "failed")], WORKER) == [(True, "failed")]
    row = await pool.fetchrow("SELECT status, worker_id, finished_at FROM jobs WHERE id = $1", job.id)
    assert row["status"] == "failed" and row["worker_id"] is None and row["finished_at"] is not None
    trail = await _trail(pool, job.id)
    assert [kind for kind, _ in trail][-3:] == ["execution_completed", "execution_failed", "failed"]
    assert trail[-1][1] == trail[-2][1]  # one transaction
    # Written once: nothing is left for finalize, and a repeated write changes nothing.
    assert await store.finalize(pool, [job.id], WORKER) == [(False, "failed")]
    assert await store.write_results(pool, [_result(job, 1)], WORKER) == [(False, None)]


async def test_a_job_whose_other_execution_was_cancelled_completes(pool: asyncpg.Pool) -> None:
    job = await _claimed(pool, 2)
    await pool.execute(
        "UPDATE executions SET status = 'cancelled', finished_at = now() WHERE id = $1", job.executions[0].id
    )
    assert await store.write_results(pool, [_result(job, 1)], WORKER) == [(True, "completed")]
    assert await pool.fetchval("SELECT cancelled_at FROM jobs WHERE id = $1", job.id) is None


async def test_a_result_for_a_job_no_longer_ours_finishes_nothing(pool: asyncpg.Pool) -> None:
    job = await _claimed(pool, 1)
    await pool.execute("UPDATE jobs SET worker_id = 'someone-else' WHERE id = $1", job.id)
    # The execution is still running, so its result is kept; the job is not ours to finish.
    assert await store.write_results(pool, [_result(job, 0)], WORKER) == [(True, None)]
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job.id) == "running"


async def test_results_written_side_by_side_leave_the_job_to_finalize(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    """Two batches each carrying one execution of the same job, both started while the job
    row is locked: each statement's snapshot shows the other execution still running, so
    neither finishes the job, and finalize (which the job's task runs then) does."""
    job = await _claimed(pool, 2)
    async with db.transaction():
        await db.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
        first = asyncio.create_task(store.write_results(pool, [_result(job, 0)], WORKER))
        second = asyncio.create_task(store.write_results(pool, [_result(job, 1)], WORKER))
        await _until_waiting_on_locks(db, 2)
    assert await first == [(True, None)] and await second == [(True, None)]
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job.id) == "running"
    assert await store.finalize(pool, [job.id], WORKER) == [(True, "completed")]


async def _until_waiting_on_locks(db: asyncpg.Connection, count: int) -> None:
    async with asyncio.timeout(10):
        while True:
            # Inside a transaction the activity view is read once and kept: read it afresh.
            await db.execute("SELECT pg_stat_clear_snapshot()")
            if (
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
                >= count
            ):
                return
            await asyncio.sleep(0.01)


async def test_the_result_write_locks_the_job_before_its_executions(
    pool: asyncpg.Pool, db: asyncpg.Connection, dsn: str
) -> None:
    """Jobs before executions, as the cancel statements lock them: the opposite order could
    deadlock against a cancel of the same job."""
    job = await _claimed(pool, 1)
    other = await asyncpg.connect(dsn)
    try:
        async with db.transaction():
            await db.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
            write = asyncio.create_task(store.write_results(pool, [_result(job, 0)], WORKER))
            await _until_waiting_on_locks(db, 1)
            # Waiting for the job's lock, it holds none of its executions' yet.
            async with other.transaction():
                await other.execute(
                    "SELECT 1 FROM executions WHERE id = $1 FOR NO KEY UPDATE NOWAIT", job.executions[0].id
                )
        assert await write == [(True, "completed")]
    finally:
        await other.close()


async def test_only_a_clean_shutdown_hands_back_the_attempt(pool: asyncpg.Pool) -> None:
    """A job requeued for any other reason keeps the attempt it used, so that whatever keeps
    interrupting it ends in RUNNER_MAX_JOB_ATTEMPTS, not in a loop of GPU calls."""
    job = await _claimed(pool, 1)
    assert await store.requeue_interrupted(pool, job.id, WORKER, reason="unsettled")
    assert await pool.fetchval("SELECT attempts FROM jobs WHERE id = $1", job.id) == 1
    (again,) = await store.claim(pool, worker_id=WORKER, limit=1, lease_s=60, capacity=ALL)
    assert again.attempts == 2
    assert await store.requeue_interrupted(pool, job.id, WORKER)  # a shutdown
    assert await pool.fetchval("SELECT attempts FROM jobs WHERE id = $1", job.id) == 1


async def test_pool_connections_keep_generic_plans_across_releases(dsn: str) -> None:
    """With history in the tables Postgres would otherwise plan some statements again on
    every call (benchmarks/README.md); the setting must survive the pool's reset."""
    pool = await create_pool(dsn, 2)
    try:
        for _ in range(4):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    finally:
        await pool.close()
