"""Cancellation: one statement does the job, its executions, the audit row and the NOTIFY.
A task held here is signalled as soon as that statement is sent (the commit and the
connections' close overlap); one held elsewhere hears the NOTIFY."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import structlog

from runner.cancel import notifications
from runner.cancel.registry import JobContextManager, PendingCancel, StopReason
from runner.db import backoff_s
from runner.errors import JobForbidden, JobNotFound, NotCancellable
from runner.metrics import Metrics
from runner.timeutil import iso

log = structlog.get_logger("runner.cancel.canceller")



def _exec_cancel_set(backends: str, grace: str) -> str:
    """Executions that were running owe the backend a cancel when they have a remote id, or
    when their backend cancels through a configured URL (`backends`: such backends' names)."""
    owes = f"e.status = 'running' AND (e.remote_id IS NOT NULL OR e.backend = ANY({backends}::text[]))"
    return f"""status = 'cancelled', finished_at = now(),
    remote_cancel = CASE WHEN {owes} THEN 'pending' END,
    remote_cancel_due = CASE WHEN {owes} THEN now() + make_interval(secs => {grace}) END"""


def _job_cancel_set(actor: str, reason: str) -> str:
    return f"""status = 'cancelled', cancelled_at = now(), cancelled_by = {actor},
    cancel_reason = {reason}, finished_at = now(), worker_id = NULL"""


# $1 job, $2 actor, $3 reason, $4 actor is admin, $5 remote-cancel backends, $6 grace.
CANCEL_JOB = f"""
WITH target AS (
    SELECT id, status, owner, cancelled_at FROM jobs WHERE id = $1 FOR NO KEY UPDATE),
job AS (
    UPDATE jobs j SET {_job_cancel_set("$2", "$3")}
    FROM target t
    WHERE j.id = t.id AND t.status IN ('queued', 'running') AND (t.owner = $2 OR $4)
    RETURNING j.id, j.cancelled_at),
execs AS (
    UPDATE executions e SET {_exec_cancel_set("$5", "$6")}
    FROM job WHERE e.job_id = job.id AND e.status IN ('queued', 'running')
    RETURNING e.id),
event AS (
    INSERT INTO job_events (job_id, kind, actor, detail)
    SELECT job.id, 'cancelled', $2, jsonb_build_object(
        'reason', $3::text, 'previous_status', t.status,
        'executions_cancelled', (SELECT count(*) FROM execs))
    FROM job, target t),
notify AS (
    SELECT {notifications.job_sql("job.id")}, runner_notify_job(job.id) FROM job)
SELECT t.status AS previous_status, t.owner, coalesce(job.cancelled_at, t.cancelled_at) AS cancelled_at,
    job.id IS NOT NULL AS changed, (SELECT count(*) FROM execs) AS executions_cancelled,
    (SELECT count(*) FROM notify) AS notified
FROM target t LEFT JOIN job ON true"""

# $1 job, $2 actor, $3 reason, $4 actor is admin, $5 remote-cancel backends, $6 grace, $7 execution.
CANCEL_EXECUTION = f"""
WITH target AS (
    SELECT j.status AS job_status, j.owner, e.id AS execution_id, e.status, e.finished_at
    FROM jobs j JOIN executions e ON e.job_id = j.id
    WHERE j.id = $1 AND e.id = $7 FOR NO KEY UPDATE OF j, e),
ex AS (
    UPDATE executions e SET {_exec_cancel_set("$5", "$6")}
    FROM target t
    WHERE e.id = t.execution_id AND t.status IN ('queued', 'running') AND (t.owner = $2 OR $4)
    RETURNING e.id, e.finished_at),
others AS (
    SELECT status FROM executions WHERE job_id = $1 AND id <> $7
    UNION ALL SELECT 'cancelled' FROM ex),
-- No task holds a queued job: if nothing of it is left to run, it is finished here.
fin AS (
    UPDATE jobs j SET
        status = CASE WHEN f.all_cancelled THEN 'cancelled'
                      WHEN f.any_failed THEN 'failed' ELSE 'completed' END,
        finished_at = now(),
        cancelled_at = CASE WHEN f.all_cancelled THEN now() END,
        cancelled_by = CASE WHEN f.all_cancelled THEN $2 END,
        cancel_reason = CASE WHEN f.all_cancelled THEN $3 END
    FROM (SELECT bool_and(status = 'cancelled') AS all_cancelled,
                 bool_or(status = 'failed') AS any_failed,
                 bool_and(status IN ('completed', 'failed', 'cancelled')) AS all_done
          FROM others) f
    WHERE j.id = $1 AND j.status = 'queued' AND f.all_done AND EXISTS (SELECT 1 FROM ex)
    RETURNING j.status),
event AS (
    INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
    SELECT $1, ex.id, 'execution_cancelled', $2, jsonb_build_object(
        'reason', $3::text, 'previous_status', t.status)
    FROM ex, target t
    UNION ALL
    SELECT $1, NULL, fin.status, $2, jsonb_build_object('reason', 'its last execution was cancelled')
    FROM fin),
notify AS (
    SELECT {notifications.execution_sql("$1", "ex.id")}, runner_notify_job($1) FROM ex)
SELECT t.job_status, t.owner, t.status AS previous_status,
    coalesce(ex.finished_at, t.finished_at) AS cancelled_at, ex.id IS NOT NULL AS changed,
    (SELECT count(*) FROM notify) AS notified
FROM target t LEFT JOIN ex ON true"""

# $1 owner (and actor), $2 statuses, $3 reason, $4 remote-cancel backends, $5 grace,
# $6 chunk size: each chunk is one atomic statement (see Canceller.cancel_all); $7 the
# sending instance, which signals its own tasks itself and so skips these notifications.
CANCEL_ALL = f"""
WITH targets AS (
    SELECT id, status FROM jobs WHERE owner = $1 AND status = ANY($2::text[])
    ORDER BY id LIMIT $6 FOR NO KEY UPDATE),
job AS (
    UPDATE jobs j SET {_job_cancel_set("$1", "$3")}
    FROM targets t WHERE j.id = t.id
    RETURNING j.id, t.status AS previous_status),
open_execs AS (
    SELECT e.id FROM executions e JOIN job ON e.job_id = job.id
    WHERE e.status IN ('queued', 'running') ORDER BY e.id FOR NO KEY UPDATE OF e),
execs AS (
    UPDATE executions e SET {_exec_cancel_set("$4", "$5")}
    FROM open_execs o WHERE e.id = o.id
    RETURNING e.id),
event AS (
    INSERT INTO job_events (job_id, kind, actor, detail)
    SELECT id, 'cancelled', $1, jsonb_build_object(
        'reason', $3::text, 'previous_status', previous_status, 'bulk', true)
    FROM job),
-- Running jobs' notifications in chunks (runner.cancel.notifications): cancelling 10,000
-- jobs wakes each instance 50 times, not 10,000.
notify AS (
    {notifications.bulk_sql("$7", "SELECT id FROM job WHERE previous_status = 'running'")}),
watchers AS (
    SELECT runner_notify_job(id) FROM job)
SELECT coalesce((SELECT array_agg(id) FROM job), '{{}}') AS ids,
    coalesce((SELECT array_agg(id) FROM job WHERE previous_status = 'running'), '{{}}') AS running,
    (SELECT count(*) FROM execs) AS executions_cancelled,
    (SELECT count(*) FROM notify) + (SELECT count(*) FROM watchers) AS notified"""


BULK_CHUNK = 1000


def cancel_applied(row: asyncpg.Record | None) -> bool:
    """The job is cancelled after CANCEL_JOB: by this statement, or by one before it."""
    return row is not None and (row["changed"] or row["previous_status"] == "cancelled")


async def _let_the_stop_run_first() -> None:
    """Stopping the work matters more than answering: yield so the cancelled task's cleanup
    step and then its connections' close run before the reply is built. (Its remote cancels
    are awaited network calls: they go on after the reply.)"""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def fetch_retrying(pool: asyncpg.Pool, sql: str, *args: Any) -> asyncpg.Record | None:
    """One statement, tried again (with backoff, twice at most) if Postgres aborted it to
    break a deadlock. Lock order (jobs before executions, ids ascending) makes that rare; it
    must never be a 500. Other failures go to the caller: someone is waiting for an answer."""
    attempt = 0
    while True:
        try:
            return await pool.fetchrow(sql, *args)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            attempt += 1
            if attempt == 3:
                raise
            log.warning("deadlock_retried", attempt=attempt)
        await asyncio.sleep(backoff_s(attempt, base_s=0.005))


class Canceller:
    def __init__(self, pool: asyncpg.Pool, manager: JobContextManager, metrics: Metrics, *,
                 remote_cancel_backends: list[str], holder_grace_s: float, instance_id: str) -> None:
        self.pool = pool
        self.instance_id = instance_id
        self.manager = manager
        self.metrics = metrics
        self.remote_cancel_backends = remote_cancel_backends
        # How long the task holding a job gets to send its own remote cancels before the
        # sweeper on any instance takes over.
        self.holder_grace_s = holder_grace_s

    def _refuse_unless_changed(self, row: asyncpg.Record, actor: str, admin: bool, what: str) -> None:
        """Nothing was written: another wallet's (403), or already terminal. Cancelled
        already is fine (idempotent); completed or failed is 409."""
        if row["changed"]:
            return
        if row["owner"] != actor and not admin:
            self.metrics.cancel_requests.labels("forbidden").inc()
            raise JobForbidden("this job belongs to another wallet")
        previous = row["previous_status"]
        if previous != "cancelled":
            self.metrics.cancel_requests.labels("not_cancellable").inc()
            raise NotCancellable(f"the {what} is {previous}; only queued or running ones can be cancelled",
                                 status=previous)

    async def cancel_job(self, job_id: uuid.UUID, *, actor: str, admin: bool, reason: str | None,
                         stop: StopReason = StopReason.CANCELLED) -> dict[str, Any]:
        sent = fetch_retrying(self.pool, CANCEL_JOB, job_id, actor, reason, admin,
                              self.remote_cancel_backends, self.holder_grace_s)
        ahead = False
        if not self.manager.is_running(job_id):
            row = await sent  # held elsewhere, or by nobody: the NOTIFY reaches the holder
        else:
            # Held here: stop it now, while Postgres commits (see runner.cancel.registry).
            statement = asyncio.create_task(sent, name=f"cancel-{job_id}")
            ahead = self.manager.cancel_ahead(job_id, stop, PendingCancel(actor, admin, reason, statement))
            if ahead:
                await _let_the_stop_run_first()
            # The signalled task waits on this statement: it runs to its end even if we do not.
            row = await (asyncio.shield(statement) if ahead else statement)
        if row is None:
            self.metrics.cancel_requests.labels("not_found").inc()
            raise JobNotFound(f"no job {job_id}")
        previous = row["previous_status"]
        self._refuse_unless_changed(row, actor, admin, "job")
        running = row["changed"] and previous == "running"
        if running and not ahead and self.manager.cancel(job_id, stop):
            await _let_the_stop_run_first()
        self.metrics.cancel_requests.labels("cancelled" if row["changed"] else "already_cancelled").inc()
        log.info("job_cancelled", job_id=str(job_id), by=actor, previous_status=previous,
                 reason=reason, changed=row["changed"])
        return {
            "ok": True, "job_id": str(job_id), "previous_status": previous,
            "new_status": "cancelled", "context_cancelled": running or ahead,
            "executions_cancelled": row["executions_cancelled"],
            "cancelled_at": iso(row["cancelled_at"]),
        }

    async def cancel_execution(self, job_id: uuid.UUID, execution_id: uuid.UUID, *, actor: str,
                               admin: bool, reason: str | None) -> dict[str, Any]:
        row = await fetch_retrying(self.pool, CANCEL_EXECUTION, job_id, actor, reason, admin,
                                       self.remote_cancel_backends, self.holder_grace_s, execution_id)
        if row is None:
            self.metrics.cancel_requests.labels("not_found").inc()
            raise JobNotFound(f"no execution {execution_id} in job {job_id}")
        previous = row["previous_status"]
        self._refuse_unless_changed(row, actor, admin, "execution")
        running = row["changed"] and previous == "running" and row["job_status"] == "running"
        if running and self.manager.cancel_execution(job_id, execution_id):
            await _let_the_stop_run_first()
        self.metrics.cancel_requests.labels("cancelled" if row["changed"] else "already_cancelled").inc()
        log.info("execution_cancelled", job_id=str(job_id), execution_id=str(execution_id), by=actor,
                 previous_status=previous, reason=reason)
        return {
            "ok": True, "job_id": str(job_id), "execution_id": str(execution_id),
            "previous_status": previous, "new_status": "cancelled", "context_cancelled": running,
            "cancelled_at": iso(row["cancelled_at"]),
        }

    async def cancel_all(self, owner: str, *, statuses: list[str], reason: str | None) -> dict[str, Any]:
        """Cancel a wallet's active jobs, BULK_CHUNK at a time (no lock is held on them all).
        As soon as a chunk commits, the next chunk's statement is sent and then this chunk's
        tasks are signalled: Postgres cancels the next chunk while this process closes the
        previous one's connections."""
        started = time.perf_counter()
        ids: list[str] = []
        executions = 0
        first_signal_ms = None
        waited_s = 0.0
        chunk: asyncio.Task[asyncpg.Record] | None = self._cancel_chunk(owner, statuses, reason)
        try:
            while chunk is not None:
                waiting = time.perf_counter()
                row = await chunk
                waited_s += time.perf_counter() - waiting
                # A full chunk may have more behind it; the next statement starts on the next
                # loop turn, ahead of the task steps the signals below schedule.
                chunk = self._cancel_chunk(owner, statuses, reason) if len(row["ids"]) == BULK_CHUNK else None
                if sum(self.manager.cancel(job_id, StopReason.CANCELLED) for job_id in row["running"]):
                    first_signal_ms = first_signal_ms or round((time.perf_counter() - started) * 1000, 1)
                    await _let_the_stop_run_first()
                ids += [str(i) for i in row["ids"]]
                executions += row["executions_cancelled"]
        finally:
            if chunk is not None and not chunk.done():
                # Interrupted: a statement still under way commits or rolls back whole.
                chunk.cancel()
                await asyncio.gather(chunk, return_exceptions=True)
        self.metrics.cancel_requests.labels("cancelled").inc(len(ids))
        log.info("jobs_cancelled", by=owner, count=len(ids), statuses=statuses, reason=reason,
                 first_signal_ms=first_signal_ms, waited_for_statements_ms=round(waited_s * 1000, 1),
                 total_ms=round((time.perf_counter() - started) * 1000, 1))
        return {"ok": True, "cancelled": ids, "count": len(ids), "executions_cancelled": executions}

    def _cancel_chunk(self, owner: str, statuses: list[str],
                      reason: str | None) -> asyncio.Task[asyncpg.Record]:
        async def run() -> asyncpg.Record:
            row = await fetch_retrying(self.pool, CANCEL_ALL, owner, statuses, reason,
                                       self.remote_cancel_backends, self.holder_grace_s, BULK_CHUNK,
                                       self.instance_id)
            assert row is not None  # the statement always returns its one row
            return row

        return asyncio.create_task(run(), name="cancel-all-chunk")
