"""The canceller: runs a cancel statement (runner.cancel.statements) and signals the task.
A task held here is signalled as soon as its statement is sent (the commit and the
connections' close overlap); one held elsewhere hears the NOTIFY. Each method returns an
outcome; the API renders it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from runner.cancel.registry import JobContextManager, PendingCancel, StopReason
from runner.cancel.statements import CANCEL_EXECUTION, CANCEL_JOB, cancel_matching, matching
from runner.db import fetchrow_retrying_aborts
from runner.db.notify import Notifier
from runner.errors import JobForbidden, JobNotFound, NotCancellable
from runner.filters import JobFilter, where
from runner.jobs import ANOTHER_WALLET
from runner.metrics import Metrics

log = structlog.get_logger("runner.cancel.canceller")

BULK_CHUNK = 1000
DRY_RUN_IDS = 50  # the ids a dry run names
SUPERSEDED = "superseded"  # the reason a superseding submit's cancels carry


@dataclass(frozen=True, slots=True)
class JobCancel:
    job_id: uuid.UUID
    previous_status: str
    context_cancelled: bool  # it was running (held by a task, here or elsewhere): signalled
    executions_cancelled: int
    cancelled_at: datetime | None


@dataclass(frozen=True, slots=True)
class ExecutionCancel:
    job_id: uuid.UUID
    execution_id: uuid.UUID
    previous_status: str
    context_cancelled: bool
    cancelled_at: datetime | None


@dataclass(frozen=True, slots=True)
class BulkCancel:
    job_ids: list[uuid.UUID]
    executions_cancelled: int


@dataclass(frozen=True, slots=True)
class DryRun:
    count: int
    first_ids: list[uuid.UUID]  # newest first, at most DRY_RUN_IDS


# What a job's pending cancel resolves to after a bulk cancel: the shape of CANCEL_JOB's row
# that `cancel_applied` reads.
_LANDED = {"changed": True, "previous_status": "running"}
_NOT_LANDED = {"changed": False, "previous_status": None}


def cancel_applied(row: Mapping[str, Any] | None) -> bool:
    """The job is cancelled after CANCEL_JOB: by this statement, or by one before it."""
    return row is not None and (row["changed"] or row["previous_status"] == "cancelled")


async def _let_the_stop_run_first() -> None:
    """Stopping the work matters more than answering: yield so the cancelled task's cleanup
    step and then its connections' close run before the reply is built. (Its remote cancels
    are awaited network calls: they go on after the reply.)"""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


class Canceller:
    def __init__(
        self,
        pool: asyncpg.Pool,
        manager: JobContextManager,
        metrics: Metrics,
        *,
        remote_cancel_backends: list[str],
        holder_grace_s: float,
        instance_id: str,
        notifier: Notifier | None = None,
    ) -> None:
        self.pool = pool
        self.notifier = notifier  # the watchers' hints after a bulk cancel's or a supersede's commit
        self.instance_id = instance_id
        self.manager = manager
        self.metrics = metrics
        self.remote_cancel_backends = remote_cancel_backends
        # How long the task holding a job gets to send its own remote cancels before the
        # sweeper on any instance with the backend takes over.
        self.holder_grace_s = holder_grace_s

    def _refuse_unless_changed(self, row: asyncpg.Record, what: str) -> None:
        """Nothing was written: another wallet's (403), or already terminal. Cancelled
        already is fine (idempotent); completed or failed is 409."""
        if row["changed"]:
            return
        if not row["allowed"]:
            self.metrics.cancel_requests.labels("forbidden").inc()
            raise JobForbidden(ANOTHER_WALLET)
        previous = row["previous_status"]
        if previous != "cancelled":
            self.metrics.cancel_requests.labels("not_cancellable").inc()
            raise NotCancellable(
                f"the {what} is {previous}; only queued or running ones can be cancelled", status=previous
            )

    async def cancel_job(
        self,
        job_id: uuid.UUID,
        *,
        actor: str,
        admin: bool,
        reason: str | None,
        stop: StopReason = StopReason.CANCELLED,
    ) -> JobCancel:
        statement = fetchrow_retrying_aborts(
            self.pool,
            CANCEL_JOB,
            job_id,
            actor,
            reason,
            admin,
            self.remote_cancel_backends,
            self.holder_grace_s,
        )
        if self.manager.is_running(job_id):
            row, signalled = await self._cancel_held_here(job_id, statement, actor, admin, reason, stop)
        else:
            row, signalled = await statement, False  # the NOTIFY reaches the holder, if any
        if row is None:
            self.metrics.cancel_requests.labels("not_found").inc()
            raise JobNotFound(f"no job {job_id}")
        previous = row["previous_status"]
        self._refuse_unless_changed(row, "job")
        running = row["changed"] and previous == "running"
        if running and not signalled and self.manager.cancel(job_id, stop):
            # Claimed here while the statement ran: signalled after the commit.
            await _let_the_stop_run_first()
        self.metrics.cancel_requests.labels("cancelled" if row["changed"] else "already_cancelled").inc()
        log.info(
            "job_cancelled",
            job_id=str(job_id),
            by=actor,
            previous_status=previous,
            reason=reason,
            changed=row["changed"],
        )
        return JobCancel(
            job_id, previous, running or signalled, row["executions_cancelled"], row["cancelled_at"]
        )

    async def _cancel_held_here(
        self,
        job_id: uuid.UUID,
        sent: Awaitable[asyncpg.Record | None],
        actor: str,
        admin: bool,
        reason: str | None,
        stop: StopReason,
    ) -> tuple[asyncpg.Record | None, bool]:
        """The task runs here: stop it now, while Postgres commits (runner.cancel.registry).
        Returns the statement's row, and whether the task was signalled ahead of it."""
        statement = asyncio.ensure_future(sent)
        signalled = self.manager.cancel_ahead(job_id, stop, PendingCancel(actor, admin, reason, statement))
        if not signalled:
            return await statement, False
        await _let_the_stop_run_first()
        # The signalled task waits on this statement: it runs to its end even if we do not.
        return await asyncio.shield(statement), True

    async def cancel_execution(
        self, job_id: uuid.UUID, execution_id: uuid.UUID, *, actor: str, admin: bool, reason: str | None
    ) -> ExecutionCancel:
        row = await fetchrow_retrying_aborts(
            self.pool,
            CANCEL_EXECUTION,
            job_id,
            actor,
            reason,
            admin,
            self.remote_cancel_backends,
            self.holder_grace_s,
            execution_id,
        )
        if row is None:
            self.metrics.cancel_requests.labels("not_found").inc()
            raise JobNotFound(f"no execution {execution_id} in job {job_id}")
        previous = row["previous_status"]
        self._refuse_unless_changed(row, "execution")
        running = row["changed"] and previous == "running" and row["job_status"] == "running"
        if running and self.manager.cancel_execution(job_id, execution_id):
            await _let_the_stop_run_first()
        self.metrics.cancel_requests.labels("cancelled" if row["changed"] else "already_cancelled").inc()
        log.info(
            "execution_cancelled",
            job_id=str(job_id),
            execution_id=str(execution_id),
            by=actor,
            previous_status=previous,
            reason=reason,
        )
        return ExecutionCancel(job_id, execution_id, previous, running, row["cancelled_at"])

    async def cancel_all(
        self, owner: str, *, reason: str | None, job_filter: JobFilter | None = None
    ) -> BulkCancel:
        """Cancel a wallet's active jobs that `job_filter` matches (all without one),
        BULK_CHUNK at a time (no lock is held on them all). The wallet's tasks held here
        that the filter surely names are signalled at once, ahead of the statements (as
        `cancel_job` does for one job): their connections close while Postgres works. Each
        learns from its chunk's commit whether the cancel landed. The other matches held
        here are signalled after their chunk's commit; tasks held elsewhere hear each
        chunk's NOTIFY."""
        job_filter = job_filter or JobFilter()
        started = time.perf_counter()
        ids: list[uuid.UUID] = []
        executions = 0
        waited_s = 0.0
        chunk: asyncio.Task[asyncpg.Record] | None = self._cancel_chunk(owner, job_filter, reason)
        ahead = self._signal_ahead(owner, job_filter, reason)
        first_signal_ms = round((time.perf_counter() - started) * 1000, 1) if ahead else None
        try:
            if ahead:  # inside the try: interrupted here, the signalled tasks still learn
                await _let_the_stop_run_first()
            while chunk is not None:
                waiting = time.perf_counter()
                row = await chunk
                waited_s += time.perf_counter() - waiting
                # A full chunk may have more behind it; the next statement starts on the next
                # loop turn, ahead of the task steps the signals below schedule.
                chunk = (
                    self._cancel_chunk(owner, job_filter, reason) if len(row["ids"]) == BULK_CHUNK else None
                )
                for job_id in row["ids"]:
                    landed = ahead.pop(job_id, None)
                    if landed is not None:
                        landed.set_result(_LANDED)
                # Claimed here since the signals above (or held by a task on another loop).
                if sum(self.manager.cancel(job_id, StopReason.CANCELLED) for job_id in row["running"]):
                    first_signal_ms = first_signal_ms or round((time.perf_counter() - started) * 1000, 1)
                    await _let_the_stop_run_first()
                ids += row["ids"]
                executions += row["executions_cancelled"]
                if self.notifier is not None:
                    for job_id in row["ids"]:
                        self.notifier.changed(job_id, owner)
        except BaseException as exc:
            for landed in ahead.values():  # the statement's fate is unknown: each finds out
                if isinstance(exc, Exception):
                    landed.set_exception(exc)
                else:
                    landed.cancel()
            ahead.clear()
            raise
        finally:
            for landed in ahead.values():
                landed.set_result(_NOT_LANDED)  # finished before its chunk reached it
            if chunk is not None and not chunk.done():
                # Interrupted: a statement still under way commits or rolls back whole.
                chunk.cancel()
                await asyncio.gather(chunk, return_exceptions=True)
        self.metrics.cancel_requests.labels("cancelled").inc(len(ids))
        log.info(
            "jobs_cancelled",
            by=owner,
            count=len(ids),
            filtered=job_filter != JobFilter(),
            reason=reason,
            first_signal_ms=first_signal_ms,
            waited_for_statements_ms=round(waited_s * 1000, 1),
            total_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return BulkCancel(ids, executions)

    def _signal_ahead(
        self, owner: str, job_filter: JobFilter, reason: str | None
    ) -> dict[uuid.UUID, asyncio.Future[Any]]:
        """Signal the owner's tasks held on this loop that the filter names whatever their
        rows say (a task holds a running job; ids and statuses are known here); each gets a
        future of "did it land". A filter on anything else is decided by the statement."""
        narrowed = (
            job_filter.backends,
            job_filter.metadata or None,
            job_filter.created_after,
            job_filter.created_before,
            job_filter.concurrency_key,
        )
        if any(x is not None for x in narrowed) or "running" not in (job_filter.statuses or ("running",)):
            return {}
        held = self.manager.held_here_by(owner)
        if job_filter.ids is not None:
            named = set(job_filter.ids)
            held = [job_id for job_id in held if job_id in named]
        loop = asyncio.get_running_loop()
        ahead: dict[uuid.UUID, asyncio.Future[Any]] = {}
        for job_id in held:
            landed = loop.create_future()
            if self.manager.cancel_ahead(
                job_id, StopReason.CANCELLED, PendingCancel(owner, False, reason, landed)
            ):
                ahead[job_id] = landed
        return ahead

    def _cancel_chunk(
        self, owner: str, job_filter: JobFilter, reason: str | None
    ) -> asyncio.Task[asyncpg.Record]:
        args: list[Any] = [
            owner,
            reason,
            self.remote_cancel_backends,
            self.holder_grace_s,
            BULK_CHUNK,
            self.instance_id,
            {"bulk": True},
        ]
        statement = cancel_matching(where(job_filter, args))

        async def run() -> asyncpg.Record:
            row = await fetchrow_retrying_aborts(self.pool, statement, *args)
            assert row is not None  # the statement always returns its one row
            return row

        return asyncio.create_task(run(), name="cancel-all-chunk")

    async def dry_run(self, owner: str, job_filter: JobFilter) -> DryRun:
        """What `cancel_all` with this filter would cancel now, cancelling nothing."""
        args: list[Any] = [owner, DRY_RUN_IDS]
        rows = await self.pool.fetch(matching(where(job_filter, args)), *args)
        return DryRun(rows[0]["found"] if rows else 0, [r["id"] for r in rows])

    async def supersede(
        self, conn: asyncpg.Connection, owner: str, key: str, new_job: uuid.UUID
    ) -> asyncpg.Record:
        """In the caller's transaction (the one creating `new_job`): cancel the wallet's
        active jobs with concurrency key `key`, reason SUPERSEDED, each one's audit row
        naming the new job. The caller holds the wallet's lock, so no other submit adds one
        meanwhile; the rows' NOTIFY goes out with its commit. Then call `superseded`."""
        args: list[Any] = [
            owner,
            SUPERSEDED,
            self.remote_cancel_backends,
            self.holder_grace_s,
            None,  # no chunks: every one, in this transaction (few: the wallet's active quota)
            self.instance_id,
            {"superseded_by": str(new_job)},
        ]
        row = await conn.fetchrow(cancel_matching(where(JobFilter(concurrency_key=key), args)), *args)
        assert row is not None  # the statement always returns its one row
        return row

    async def superseded(self, row: asyncpg.Record, owner: str) -> None:
        """After the commit of `supersede`'s transaction: stop the tasks held here (those
        held elsewhere heard the NOTIFY) and tell the watchers."""
        if sum(self.manager.cancel(job_id, StopReason.CANCELLED) for job_id in row["running"]):
            await _let_the_stop_run_first()
        if self.notifier is not None:
            for job_id in row["ids"]:
                self.notifier.changed(job_id, owner)
        self.metrics.cancel_requests.labels("cancelled").inc(len(row["ids"]))
        if row["ids"]:
            log.info("jobs_superseded", by=owner, job_ids=[str(i) for i in row["ids"]])
