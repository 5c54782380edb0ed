"""The job tasks: each claimed job runs in one asyncio.Task, registered in the
JobContextManager, with its executions (execution) running concurrently as child tasks; its
timeout, its final write (results), and -- cancelled -- the cancel path's cleanup
(runner.cancel.stopping)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from runner.cancel.canceller import Canceller
from runner.cancel.registry import JobContext, JobContextManager, StopReason
from runner.cancel.stopping import TaskStopping
from runner.db import DATABASE_ERRORS
from runner.db.notify import Notifier
from runner.errors import JobError
from runner.metrics import Metrics
from runner.supervisor import Supervisor
from runner.worker import store
from runner.worker.execution import Executions
from runner.worker.records import ClaimedJob
from runner.worker.results import Results

log = structlog.get_logger("runner.worker.tasks")


class JobTasks:
    def __init__(
        self,
        pool: asyncpg.Pool,
        instance_id: str,
        manager: JobContextManager,
        executions: Executions,
        results: Results,
        stopping: TaskStopping,
        canceller: Canceller,
        metrics: Metrics,
        supervisor: Supervisor,
        *,
        on_ended: Callable[[], None],
        notifier: Notifier | None = None,
    ) -> None:
        self.pool = pool
        self.instance_id = instance_id
        self.manager = manager
        self.executions = executions
        self.results = results
        self.stopping = stopping
        self.canceller = canceller
        self.metrics = metrics
        self.supervisor = supervisor  # owns the short tasks beside the jobs (timeouts, re-checks)
        self.on_ended = on_ended  # a job's task has ended: its slot is free
        self.notifier = notifier
        self.running: set[asyncio.Task[None]] = set()
        # Jobs whose task ended but whose final write did not happen (an execution's result
        # could not be written): retried with the lease renewal (leases), then requeued.
        self.unsettled: set[uuid.UUID] = set()

    def count(self) -> int:
        return len(self.running)

    def start(self, job: ClaimedJob) -> None:
        old = self.manager.get(job.id)
        if old is not None:
            # Requeued by another instance during our stall, and claimed back here: the old
            # task's claim is void (no writes); the new one runs once it has ended.
            log.warning("job_reclaimed_while_held", job_id=str(job.id), attempt=job.attempts)
            self.manager.cancel(job.id, StopReason.LEASE_LOST)
            self.supervisor.track(self._start_after(old.task, job), f"reclaim-{job.id}")
            return
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        ctx = self.manager.register(job.id, task, owner=job.owner)
        self.running.add(task)
        task.add_done_callback(lambda t: self._done(job.id, ctx, t))

    async def _start_after(self, old: asyncio.Task[Any], job: ClaimedJob) -> None:
        await asyncio.wait([old])
        self.start(job)  # a task holding it by now is stopped in its turn

    def _done(self, job_id: uuid.UUID, ctx: JobContext, task: asyncio.Task[None]) -> None:
        self.manager.unregister(job_id)
        self.running.discard(task)
        self.results.forget(job_id)
        self.on_ended()
        self.stopping.task_ended(ctx)
        if not task.cancelled() and task.exception() is not None:
            log.error("job_task_crashed", job_id=str(job_id), error=repr(task.exception()))

    async def _run(self, job: ClaimedJob) -> None:
        ctx = self.manager.get(job.id)
        assert ctx is not None
        jlog = log.bind(job_id=str(job.id), wallet=job.owner)
        jlog.info("job_started", attempt=job.attempts, executions=len(job.executions))
        remaining = job.remaining()
        timer = (
            asyncio.get_running_loop().call_later(remaining, self._time_out, job.id)
            if remaining is not None
            else None
        )
        try:
            for execution in job.executions:
                # An execution cancelled before its task exists is skipped (the row says so).
                if execution.id not in ctx.execution_reasons:
                    ctx.executions[execution.id] = asyncio.create_task(
                        self.executions.run(ctx, job, execution, jlog), name=f"execution-{execution.id}"
                    )
            if ctx.executions:
                # Awaited directly, so cancelling this task cancels every execution and
                # resumes only once they have all cleaned up (remote cancels sent).
                await asyncio.gather(*ctx.executions.values(), return_exceptions=True)
            written, status = await self.results.finish(job.id)
            if written:
                self.metrics.jobs_finished.labels(status).inc()
                jlog.info("job_finished", status=status)
            elif status == "cancelled":
                self.stopping.found_cancelled(ctx)
            elif status == "running":
                self.unsettled.add(job.id)
                jlog.warning("job_unsettled")
        except asyncio.CancelledError:
            await self.stopping.job_cancelled(ctx, lambda: self._requeue(job, jlog), jlog)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _time_out(self, job_id: uuid.UUID) -> None:
        self.supervisor.track(self._cancel_for_timeout(job_id), f"timeout-{job_id}")

    async def _cancel_for_timeout(self, job_id: uuid.UUID) -> None:
        """timeout_s ran out: the same path as a user's cancel (row, audit, NOTIFY, task)."""
        log.info("job_timed_out", job_id=str(job_id))
        try:
            await self.canceller.cancel_job(
                job_id, actor="system", admin=True, reason="timeout", stop=StopReason.TIMEOUT
            )
        except JobError:
            pass  # it finished in the meantime
        except DATABASE_ERRORS:
            log.exception("timeout_cancel_failed", job_id=str(job_id))

    async def _requeue(self, job: ClaimedJob, jlog: Any) -> None:
        """This instance is stopping: the job goes back to the queue for another."""
        try:
            requeued = await store.requeue_interrupted(
                self.pool, job.id, self.instance_id, notifier=self.notifier
            )
            jlog.info("job_requeued", reason="shutdown", requeued=requeued)
        except Exception:
            jlog.exception("job_requeue_failed")

    async def wind_down(self, grace_s: float, hurry: asyncio.Event) -> None:
        """Let running jobs finish for `grace_s` (or until `hurry` is set), then interrupt
        them (each goes back to the queue) and wait for them to end."""
        if not self.running:
            return
        log.info("draining", jobs=len(self.running), grace_s=grace_s)
        await self._grace(grace_s, hurry)
        pending = {t for t in self.running if not t.done()}
        if pending:
            interrupted = self.manager.cancel_all(StopReason.SHUTDOWN)
            log.info("interrupting_jobs", jobs=interrupted)
            await asyncio.gather(*pending, return_exceptions=True)

    async def _grace(self, grace_s: float, hurry: asyncio.Event) -> None:
        """Until every job task has ended, `grace_s` has passed, or `hurry` is set."""
        jobs_done = asyncio.ensure_future(asyncio.wait(set(self.running)))
        hurried = asyncio.ensure_future(hurry.wait())
        try:
            await asyncio.wait({jobs_done, hurried}, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            jobs_done.cancel()  # the wait, not the jobs
            hurried.cancel()
            await asyncio.gather(jobs_done, hurried, return_exceptions=True)
