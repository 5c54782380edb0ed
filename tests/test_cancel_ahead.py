"""A cancel signals the job's task before it commits, so the HTTP calls close while Postgres
commits: directly on the instance that holds the job (runner.context.cancel_ahead), through
a notify-only signal on another (runner.ahead). Here the commit is held back by a row lock
taken from another connection, to see each order of events."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
import pytest

import runner.ahead
from runner.config import Settings
from runner.context import JobContext
from runner.service import Runtime, running_service
from tests.client import Api, wait_event
from tests.fakes import FakeGpu
from tests.wallets import Wallet

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


async def _running(api: Api, service: Runtime, fake: FakeGpu) -> tuple[dict[str, str], str, JobContext]:
    job = await api.submit(HOLD)
    execution_id = job["executions"][0]["id"]
    await wait_event(fake.started[execution_id])
    ctx = service.manager.get(uuid.UUID(job["id"]))
    assert ctx is not None
    return job, execution_id, ctx


async def _kinds(db: asyncpg.Connection, job_id: str) -> list[str]:
    return [r["kind"] for r in await db.fetch(
        "SELECT kind FROM job_events WHERE job_id = $1 ORDER BY id", uuid.UUID(job_id))]


async def test_the_task_stops_before_the_cancel_commits(
    api: Api, service: Runtime, fake_gpu: FakeGpu, db: asyncpg.Connection, dsn: str
) -> None:
    job, execution_id, ctx = await _running(api, service, fake_gpu)
    async with job_row_locked(db, job["id"]):
        cancel = asyncio.create_task(api.cancel(job["id"]))
        await wait_event(fake_gpu.closed[execution_id])  # closed while the commit waits
        assert not cancel.done()
        other = await asyncpg.connect(dsn)
        try:  # nothing is committed yet
            assert await other.fetchval("SELECT status FROM jobs WHERE id = $1",
                                        uuid.UUID(job["id"])) == "running"
        finally:
            await other.close()
    status, reply = await cancel
    assert status == 200 and reply["previous_status"] == "running"
    assert reply["context_cancelled"] is True
    await asyncio.wait_for(ctx.stopped.wait(), 10)
    # The remote cancel waited for the commit, so its one call was recorded as answered (sent
    # before, it would find no cancel owed, and the sweeper would send a second one).
    done = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged")
    assert done["status"] == "cancelled" and fake_gpu.url_cancels == [execution_id]
    kinds = await _kinds(db, job["id"])
    assert kinds.index("cancelled") < kinds.index("task_stopped")
    assert kinds.count("task_stopped") == 1


async def test_a_job_that_finished_first_stays_finished_with_no_stop_recorded(
    api: Api, service: Runtime, fake_gpu: FakeGpu, db: asyncpg.Connection
) -> None:
    job, execution_id, ctx = await _running(api, service, fake_gpu)
    async with job_row_locked(db, job["id"]) as tx:
        cancel = asyncio.create_task(api.cancel(job["id"]))
        await wait_event(fake_gpu.closed[execution_id])
        # Its completion commits first (as the worker's final write would).
        await tx.execute("UPDATE executions SET status = 'completed', finished_at = now() "
                         "WHERE job_id = $1", uuid.UUID(job["id"]))
        await tx.execute("UPDATE jobs SET status = 'completed', finished_at = now(), worker_id = NULL "
                         "WHERE id = $1", uuid.UUID(job["id"]))
        await tx.execute("COMMIT")
    status, reply = await cancel
    assert status == 409 and reply["error"] == "not_cancellable" and reply["status"] == "completed"
    await asyncio.wait_for(ctx.stopped.wait(), 10)
    assert (await api.job(job["id"]))["status"] == "completed"
    assert "task_stopped" not in await _kinds(db, job["id"])
    assert fake_gpu.url_cancels == []  # nothing was left running to cancel remotely


async def test_a_cancel_whose_statement_failed_is_retried_until_recorded(
    api: Api, service: Runtime, fake_gpu: FakeGpu, db: asyncpg.Connection, dsn: str
) -> None:
    job, execution_id, ctx = await _running(api, service, fake_gpu)
    async with job_row_locked(db, job["id"]):
        cancel = asyncio.create_task(api.cancel(job["id"], reason="too slow"))
        await wait_event(fake_gpu.closed[execution_id])
        # The connection carrying the cancel is cut while it waits for the lock.
        pid = await _waiting_on_a_lock(db)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        status, reply = await cancel
        assert status == 503 and reply["error"] == "unavailable"
        # The work stopped all the same, and the GPU was told at once.
        await wait_event(fake_gpu.url_cancelled[execution_id])
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
        pid = await db.fetchval("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND query LIKE '%FOR NO KEY UPDATE%' LIMIT 1")
        if pid is not None:
            return int(pid)
        assert time.monotonic() < deadline, "no cancel statement is waiting on the row lock"
        await asyncio.sleep(0.01)


async def test_another_wallets_cancel_does_not_touch_the_task(
    api: Api, service: Runtime, fake_gpu: FakeGpu, http: aiohttp.ClientSession
) -> None:
    job, execution_id, ctx = await _running(api, service, fake_gpu)
    stranger = await Api.signed_in(http, api.base)
    status, body = await stranger.cancel(job["id"])
    assert status == 403 and body["error"] == "forbidden"
    assert ctx.reason is None and not ctx.task.done()
    assert not fake_gpu.closed[execution_id].is_set()
    assert (await api.cancel(job["id"], wait=True))[1]["stopped"] is True


# -- across instances: the API on one, the job on another (runner.ahead) -----------------------

@asynccontextmanager
async def two_instances(dsn: str, settings: Settings, http: aiohttp.ClientSession
                        ) -> AsyncIterator[tuple[Api, Runtime]]:
    """The API on one instance (A), the worker on another: yields A's client and the worker."""
    async with running_service(settings, "api", dsn=dsn) as a, \
            running_service(settings, "worker", dsn=dsn) as b:
        yield await Api.signed_in(http, f"http://127.0.0.1:{a.port}"), b


async def test_a_task_on_another_instance_stops_before_the_cancel_commits(
    dsn: str, settings: Settings, http: aiohttp.ClientSession, fake_gpu: FakeGpu,
    db: asyncpg.Connection
) -> None:
    async with two_instances(dsn, settings, http) as (api, b):
        job, execution_id, ctx = await _running(api, b, fake_gpu)
        async with job_row_locked(db, job["id"]):
            cancel = asyncio.create_task(api.cancel(job["id"]))
            await wait_event(fake_gpu.closed[execution_id])  # B heard the signal, not the commit
            assert not cancel.done() and ctx.pending_cancel is not None
            assert not ctx.pending_cancel.outcome.done()
        status, reply = await cancel
        assert status == 200 and reply["previous_status"] == "running"
        await asyncio.wait_for(ctx.stopped.wait(), 10)
        assert ctx.pending_cancel.outcome.result() is True
        done = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged")
        assert done["status"] == "cancelled" and fake_gpu.url_cancels == [execution_id]
        kinds = await _kinds(db, job["id"])
        assert kinds.index("cancelled") < kinds.index("task_stopped")
        assert kinds.count("cancelled") == 1 and kinds.count("task_stopped") == 1


async def test_a_signal_is_honoured_only_for_the_jobs_wallet_and_the_row_decides(
    dsn: str, settings: Settings, http: aiohttp.ClientSession, fake_gpu: FakeGpu,
    db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signals with no cancel behind them: another wallet's is ignored; the owner's stops
    the task, and with no commit to confirm it the holder reads the row and records the
    cancel itself."""
    monkeypatch.setattr(runner.ahead, "CONFIRM_S", 0.2)
    async with two_instances(dsn, settings, http) as (api, b):
        job, execution_id, ctx = await _running(api, b, fake_gpu)

        async def signal(actor: str, admin: bool = False) -> None:
            payload = json.dumps({"job": job["id"], "actor": actor, "admin": admin,
                                  "reason": "signal only", "from": "a-test"})
            await db.execute("SELECT pg_notify($1, $2)", runner.ahead.CANCEL_AHEAD, payload)

        stranger = Wallet().address
        await signal(stranger)
        await db.execute("SELECT pg_notify($1, 'not json')", runner.ahead.CANCEL_AHEAD)
        # A later signal is delivered after these on the same connection: once it has acted,
        # the earlier ones have been handled.
        await signal(api.wallet.address)  # type: ignore[union-attr]
        await wait_event(fake_gpu.closed[execution_id])
        assert ctx.pending_cancel is not None and ctx.pending_cancel.actor == api.wallet.address  # type: ignore[union-attr]
        await asyncio.wait_for(ctx.stopped.wait(), 10)
        done = await api.job(job["id"])
        assert done["status"] == "cancelled" and done["cancel_reason"] == "signal only"
        assert done["cancelled_by"] == api.wallet.address  # type: ignore[union-attr]
        kinds = await _kinds(db, job["id"])
        assert kinds.count("cancelled") == 1 and kinds.count("task_stopped") == 1


async def test_a_signalled_job_that_finished_first_records_no_stop(
    dsn: str, settings: Settings, http: aiohttp.ClientSession, fake_gpu: FakeGpu,
    db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.ahead, "CONFIRM_S", 0.2)
    async with two_instances(dsn, settings, http) as (api, b):
        job, execution_id, ctx = await _running(api, b, fake_gpu)
        async with job_row_locked(db, job["id"]) as tx:
            cancel = asyncio.create_task(api.cancel(job["id"]))
            await wait_event(fake_gpu.closed[execution_id])
            await tx.execute("UPDATE executions SET status = 'completed', finished_at = now() "
                             "WHERE job_id = $1", uuid.UUID(job["id"]))
            await tx.execute("UPDATE jobs SET status = 'completed', finished_at = now(), worker_id = NULL "
                             "WHERE id = $1", uuid.UUID(job["id"]))
            await tx.execute("COMMIT")
        status, reply = await cancel
        assert status == 409 and reply["status"] == "completed"
        await asyncio.wait_for(ctx.stopped.wait(), 10)  # the row, read after CONFIRM_S, said so
        assert ctx.pending_cancel is not None and ctx.pending_cancel.outcome.result() is False
        assert "task_stopped" not in await _kinds(db, job["id"])
        assert fake_gpu.url_cancels == []
