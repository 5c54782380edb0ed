"""Stop records: a cancelled job's task leaves an audit row with its latency.

They are written in batches that linger briefly, so that cancels one after another share a
statement and a commit; someone waiting on a stop (`?wait=true`) has it written at once. A
task signalled ahead of its cancel's commit (runner.cancel.registry) records its stop only once
Postgres has the job cancelled -- not at all if the job had finished first -- and, should the
cancel's statement have failed, retries the cancel itself until it lands.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from runner.cancel import statements
from runner.cancel.canceller import Canceller, cancel_applied
from runner.cancel.registry import JobContext, PendingCancel, StopReason
from runner.db import DATABASE_ERRORS, backoff_s, is_transient
from runner.db.batch import Batcher
from runner.db.notify import Notifier
from runner.errors import JobError
from runner.metrics import Metrics

log = structlog.get_logger("runner.cancel.stops")


@dataclass(frozen=True, slots=True)
class StopRecord:
    job_id: uuid.UUID
    reason: str
    local_latency_ms: float | None
    executions: int
    # Executions whose work ended with their call (local kinds, http): their GPU-seconds,
    # and the stop is the moment their work was seen over.
    spent: tuple[tuple[uuid.UUID, float], ...] = ()


async def record_stops(
    pool: asyncpg.Pool, stops: list[StopRecord], worker_id: str, notifier: Notifier | None = None
) -> list[None]:
    """Tasks of cancelled jobs have stopped: record each (statements.RECORD_STOPS)."""
    rows = await pool.fetch(
        statements.RECORD_STOPS,
        [r.job_id for r in stops],
        [r.reason for r in stops],
        [r.local_latency_ms for r in stops],
        [r.executions for r in stops],
        worker_id,
        [eid for r in stops for eid, _ in r.spent],
        [sec for r in stops for _, sec in r.spent],
    )
    if notifier is not None:
        for row in rows:
            notifier.changed(row["job_id"], row["owner"])
    return [None] * len(stops)


LINGER_S = 0.02
OWED_CANCEL_RETRY_MAX_S = 2.0

Spawn = Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]


def _stop_recorded(ctx: JobContext, write: asyncio.Future[None]) -> None:
    if not write.cancelled():
        write.exception()  # a failed batch is logged by the batcher; this marks it seen
    ctx.stopped.set()


class StopRecorder:
    def __init__(
        self,
        pool: asyncpg.Pool,
        instance_id: str,
        canceller: Canceller,
        metrics: Metrics,
        spawn: Spawn,
        notifier: Notifier | None = None,
    ) -> None:
        self.canceller = canceller
        self.metrics = metrics
        self._spawn = spawn  # the supervisor's short tasks, awaited when the worker drains
        self.draining = False
        # Jobs whose task has stopped for a cancel not yet on record: their rows still say
        # `running` here, and must not be taken for orphans.
        self.in_progress: set[uuid.UUID] = set()
        self.batch: Batcher[StopRecord, None] = Batcher(
            "task_stopped", lambda stops: record_stops(pool, stops, instance_id, notifier), linger_s=LINGER_S
        )

    def record(self, ctx: JobContext, reason: StopReason) -> None:
        """The task stopped for a cancel: hand its record over (the batcher owns the write)."""
        latency = time.perf_counter() - (ctx.cancel_requested_at or time.perf_counter())
        record = StopRecord(
            ctx.job_id, reason.value, latency * 1000, len(ctx.executions), tuple(ctx.spent.items())
        )
        if ctx.pending_cancel is None:
            ctx.stop_write = self._put(ctx, record)
        else:
            self.in_progress.add(ctx.job_id)
            ctx.stop_write = self._spawn(
                self._record_once_cancelled(ctx, record, ctx.pending_cancel, reason), f"stop-{ctx.job_id}"
            )
        log.info(
            "job_task_stopped",
            job_id=str(ctx.job_id),
            reason=reason.value,
            latency_ms=round(latency * 1000, 3),
        )

    def on_task_done(self, ctx: JobContext) -> None:
        """The job's task has ended: "stopped" is reported once its stop is on record."""
        if ctx.reason is not None and ctx.reason.is_cancel and ctx.stop_write is None:
            # Cancelled as it was finishing (or before it began): record the stop all the same.
            self.record(ctx, ctx.reason)
        if ctx.stop_write is None:
            ctx.stopped.set()
        else:
            ctx.stop_write.add_done_callback(lambda write: _stop_recorded(ctx, write))

    async def until_stopped(self, ctx: JobContext) -> None:
        """Wait until the job's task has stopped and its stop is on record; being waited
        for, that record does not linger."""
        ctx.stop_awaited = True
        if ctx.stop_write is not None and not ctx.stop_write.done():
            self.batch.flush_soon()
        await ctx.stopped.wait()

    def _put(self, ctx: JobContext, record: StopRecord) -> asyncio.Future[None]:
        self.metrics.cancel_stop_seconds.observe((record.local_latency_ms or 0.0) / 1000)
        self.metrics.jobs_finished.labels("cancelled").inc()
        return self.batch.put(record, urgent=ctx.stop_awaited)

    async def _record_once_cancelled(
        self, ctx: JobContext, record: StopRecord, pending: PendingCancel, reason: StopReason
    ) -> None:
        try:
            landed = await self.cancel_landed(pending)
            if landed is None:  # the statement failed: the work has stopped, the row does not say so
                landed = await self._record_owed_cancel(record.job_id, pending, reason)
            if landed:
                await self._put(ctx, record)
        finally:
            self.in_progress.discard(record.job_id)

    async def cancel_landed(self, pending: PendingCancel) -> bool | None:
        """Whether the cancel sent ahead left the job cancelled (False: it had finished
        first), or None when its statement failed and the row says nothing yet."""
        try:
            return cancel_applied(await asyncio.shield(pending.statement))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this task is being cancelled (the statement may have been too)
        except DATABASE_ERRORS:
            pass
        return None

    async def _record_owed_cancel(
        self, job_id: uuid.UUID, pending: PendingCancel, reason: StopReason
    ) -> bool:
        """Retry the cancel until Postgres has it (the job stays leased to this instance
        meanwhile); False if the job turned out to have finished first, or the write is
        refused for good."""
        attempt = 0
        while True:
            try:
                await self.canceller.cancel_job(
                    job_id, actor=pending.actor, admin=pending.admin, reason=pending.reason, stop=reason
                )
                log.info("owed_cancel_recorded", job_id=str(job_id), by=pending.actor)
                return True
            except JobError:
                return False  # it finished first after all
            except DATABASE_ERRORS as exc:
                if not is_transient(exc):
                    # Retrying would repeat the refusal. The job's lease check finds it held
                    # by no task and requeues it; the work itself has stopped.
                    log.error("owed_cancel_refused", job_id=str(job_id), error=repr(exc))
                    return False
                if self.draining:
                    # Stopping: the job's lease ends with this instance, so it is requeued.
                    log.error("owed_cancel_abandoned", job_id=str(job_id), error=repr(exc))
                    return False
                log.warning("owed_cancel_retry", job_id=str(job_id), error=repr(exc))
            attempt += 1
            await asyncio.sleep(backoff_s(attempt, cap_s=OWED_CANCEL_RETRY_MAX_S))
