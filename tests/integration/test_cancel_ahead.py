"""A cancel on the instance that holds the job signals the task as its statement is sent, so
the HTTP calls close while Postgres commits (runner.cancel.registry.cancel_ahead). Here the commit is
held back by a row lock taken from another connection, to see each order of events."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import pytest

from runner.cancel.registry import JobContext
from runner.fakes import FakeProviders
from runner.runtime import Runtime
from tests.client import Api, wait_event

HOLD = {"backend": "gpu", "input": {"mode": "hold"}}


@asynccontextmanager
async def job_row_locked(db: asyncpg.Connection, job_id: str) -> AsyncIterator[asyncpg.Connection]:
    """Hold the job's row lock: a cancel statement waits behind it, uncommitted. The body may
    COMMIT what it wrote in the same transaction; otherwise it is rolled back."""
    await db.execute("BEGIN")
    try:
        await db.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", uuid.UUID(job_id))
        yield db
    finally:
        if db.is_in_transaction():
            await db.execute("ROLLBACK")


async def _running(api: Api, service: Runtime, fake: FakeProviders) -> tuple[dict[str, str], str, JobContext]:
    job = await api.submit(HOLD)
    execution_id = job["executions"][0]["id"]
    await wait_event(fake.web.started[execution_id])
    ctx = service.manager.get(uuid.UUID(job["id"]))
    assert ctx is not None
    return job, execution_id, ctx


async def _cancel(api: Api, job_id: str, how: str, reason: str | None = None) -> tuple[int, Any]:
    """One job's cancel, or the wallet's cancel-all (which signals the same way)."""
    if how == "job":
        return await api.cancel(job_id, reason=reason)
    return await api.call("POST", "/jobs/cancel", json={"reason": reason})


async def _kinds(db: asyncpg.Connection, job_id: str) -> list[str]:
    return [
        r["kind"]
        for r in await db.fetch(
            "SELECT kind FROM job_events WHERE job_id = $1 ORDER BY id", uuid.UUID(job_id)
        )
    ]


@pytest.mark.parametrize("how", ["job", "all"])
async def test_the_task_stops_before_the_cancel_commits(
    api: Api, service: Runtime, fake_gpu: FakeProviders, db: asyncpg.Connection, dsn: str, how: str
) -> None:
    job, execution_id, ctx = await _running(api, service, fake_gpu)
    async with job_row_locked(db, job["id"]):
        cancel = asyncio.create_task(_cancel(api, job["id"], how))
        await wait_event(fake_gpu.web.closed[execution_id])  # closed while the commit waits
        assert not cancel.done()
        other = await asyncpg.connect(dsn)
        try:  # nothing is committed yet
            assert (
                await other.fetchval("SELECT status FROM jobs WHERE id = $1", uuid.UUID(job["id"]))
                == "running"
            )
        finally:
            await other.close()
    status, reply = await cancel
    if how == "job":
        assert status == 200 and reply["previous_status"] == "running"
        assert reply["context_cancelled"] is True
    else:
        assert status == 200 and reply["cancelled"] == [job["id"]]
    await asyncio.wait_for(ctx.stopped.wait(), 10)
    # The remote cancel waited for the commit, so its one call was recorded as answered (sent
    # before, it would find no cancel owed, and the sweeper would send a second one).
    done = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged")
    assert done["status"] == "cancelled" and fake_gpu.web.url_cancels == [execution_id]
    kinds = await _kinds(db, job["id"])
    assert kinds.index("cancelled") < kinds.index("task_stopped")
    assert kinds.count("task_stopped") == 1


@pytest.mark.parametrize("how", ["job", "all"])
async def test_a_job_that_finished_first_stays_finished_with_no_stop_recorded(
    api: Api, service: Runtime, fake_gpu: FakeProviders, db: asyncpg.Connection, how: str
) -> None:
    job, execution_id, ctx = await _running(api, service, fake_gpu)
    async with job_row_locked(db, job["id"]) as tx:
        cancel = asyncio.create_task(_cancel(api, job["id"], how))
        await wait_event(fake_gpu.web.closed[execution_id])
        # Its completion commits first (as the worker's final write would).
        await tx.execute(
            "UPDATE executions SET status = 'completed', finished_at = now() WHERE job_id = $1",
            uuid.UUID(job["id"]),
        )
        await tx.execute(
            "UPDATE jobs SET status = 'completed', finished_at = now(), worker_id = NULL WHERE id = $1",
            uuid.UUID(job["id"]),
        )
        await tx.execute("COMMIT")
    status, reply = await cancel
    if how == "job":
        assert status == 409 and reply["error"] == "not_cancellable" and reply["status"] == "completed"
    else:
        assert status == 200 and reply["cancelled"] == []
    await asyncio.wait_for(ctx.stopped.wait(), 10)
    assert (await api.job(job["id"]))["status"] == "completed"
    assert "task_stopped" not in await _kinds(db, job["id"])
    assert fake_gpu.web.url_cancels == []  # nothing was left running to cancel remotely


@pytest.mark.parametrize("how", ["job", "all"])
async def test_a_cancel_whose_statement_failed_is_retried_until_recorded(
    api: Api, service: Runtime, fake_gpu: FakeProviders, db: asyncpg.Connection, dsn: str, how: str
) -> None:
    job, execution_id, ctx = await _running(api, service, fake_gpu)
    async with job_row_locked(db, job["id"]):
        cancel = asyncio.create_task(_cancel(api, job["id"], how, reason="too slow"))
        await wait_event(fake_gpu.web.closed[execution_id])
        # The connection carrying the cancel is cut while it waits for the lock.
        pid = await _waiting_on_a_lock(db)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        status, reply = await cancel
        assert status == 503 and reply["error"] == "unavailable"
        # The work stopped all the same, and the GPU was told at once.
        await wait_event(fake_gpu.web.url_cancelled[execution_id])
    # The lock is gone: the worker's retry records the cancel, then the stop.
    await asyncio.wait_for(ctx.stopped.wait(), 10)
    done = await api.job(job["id"])
    assert done["status"] == "cancelled" and done["cancel_reason"] == "too slow"
    assert done["cancelled_by"] == api.wallet.address  # type: ignore[union-attr]
    kinds = await _kinds(db, job["id"])
    assert kinds.count("cancelled") == 1 and kinds.count("task_stopped") == 1


async def _waiting_on_a_lock(db: asyncpg.Connection, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        # Inside a transaction the activity view is read once and kept: read it afresh.
        await db.execute("SELECT pg_stat_clear_snapshot()")
        pid = await db.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() "
            "AND query LIKE '%FOR NO KEY UPDATE%' LIMIT 1"
        )
        if pid is not None:
            return int(pid)
        assert time.monotonic() < deadline, "no cancel statement is waiting on the row lock"
        await asyncio.sleep(0.01)


async def test_another_wallets_cancel_does_not_touch_the_task(
    api: Api, service: Runtime, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    job, execution_id, ctx = await _running(api, service, fake_gpu)
    stranger = await Api.signed_in(http, api.base)
    status, body = await stranger.cancel(job["id"])
    assert status == 403 and body["error"] == "forbidden"
    assert ctx.reason is None and not ctx.task.done()
    assert not fake_gpu.web.closed[execution_id].is_set()
    assert (await api.cancel(job["id"], wait=True))[1]["stopped"] is True


async def test_a_cancel_all_interrupted_right_after_its_signals_still_settles_them(
    api: Api, service: Runtime, fake_gpu: FakeProviders, db: asyncpg.Connection
) -> None:
    """The request is cancelled while the tasks it signalled ahead are stopping: each must
    still learn the cancel's fate (here: retried until recorded), not wait for ever."""
    job, execution_id, ctx = await _running(api, service, fake_gpu)
    assert api.wallet is not None
    bulk = asyncio.create_task(service.canceller.cancel_all(api.wallet.address, reason="interrupted"))
    await asyncio.sleep(0)  # it has signalled the task and yields for its stop to run
    bulk.cancel()
    await asyncio.gather(bulk, return_exceptions=True)
    await wait_event(fake_gpu.web.closed[execution_id])
    await asyncio.wait_for(ctx.stopped.wait(), 10)
    done = await api.job(job["id"])
    assert done["status"] == "cancelled"
    assert (await _kinds(db, job["id"])).count("task_stopped") == 1
