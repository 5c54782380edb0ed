"""The worker: claims queued jobs and runs each in one asyncio.Task, registered in the
JobContextManager, with its executions running concurrently as child tasks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from runner import storable
from runner.backends import Backend, ExecutionCall
from runner.cancel.canceller import Canceller
from runner.cancel.registry import JobContext, JobContextManager, StopReason
from runner.cancel.remote import RemoteCanceller
from runner.cancel.stops import StopRecorder
from runner.config import Settings
from runner.db import DATABASE_ERRORS, backoff_s, is_database_error, is_transient, notify, until_written
from runner.db.notify import Notifier
from runner.errors import BackendError, JobError, Unstorable
from runner.metrics import Metrics
from runner.supervisor import Supervisor
from runner.worker import store
from runner.worker.batch import Batcher
from runner.worker.leases import LeaseKeeping
from runner.worker.slots import Slots

log = structlog.get_logger("runner.worker.worker")

CLAIM_BATCH = 100
POLL_INTERVAL_S = 2.0  # the fallback when a NOTIFY of new work is lost
EMPTY_CLAIM_COOLDOWN_S = 0.1  # after a claim that found nothing (River's fetch cooldown: 100 ms)


class Worker(LeaseKeeping):
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        settings: Settings,
        instance_id: str,
        manager: JobContextManager,
        backends: Mapping[str, Backend],
        canceller: Canceller,
        remote: RemoteCanceller,
        metrics: Metrics,
        supervisor: Supervisor,
        notifier: Notifier | None = None,
    ) -> None:
        self.pool = pool
        self.notifier = notifier
        self.settings = settings
        self.instance_id = instance_id
        self.manager = manager
        self.backends = backends
        self.canceller = canceller
        self.remote = remote
        self.metrics = metrics
        self.wake = asyncio.Event()
        self.draining = False
        self.job_tasks: set[asyncio.Task[None]] = set()
        self.supervisor = supervisor  # owns the short tasks beside the jobs (timeouts, re-checks)
        self.capacity = store.Capacity(
            sorted(backends),
            {name: b.spec.concurrency for name, b in backends.items() if b.spec.concurrency is not None},
        )
        self._have = frozenset(self.capacity.backends)
        self.slots = Slots(pool, notifier)
        # Completions are batched: one statement (and one WAL flush) for many jobs; it also
        # finishes the jobs whose last execution it records.
        self.results: Batcher[store.ExecutionResult, tuple[bool, str | None]] = Batcher(
            "execution_results", lambda items: store.write_results(pool, items, instance_id, notifier)
        )
        self.finals: Batcher[uuid.UUID, tuple[bool, str]] = Batcher(
            "finalize", lambda ids: store.finalize(pool, ids, instance_id, notifier)
        )
        self.stops = StopRecorder(pool, instance_id, canceller, metrics, supervisor.track, notifier)
        # Jobs whose task ended but whose final write did not happen (an execution's result
        # could not be written): retried with the lease renewal, then requeued.
        self.unsettled: set[uuid.UUID] = set()
        self._slot_freed = asyncio.Event()
        # For the lease check: claims under way (their jobs may not be registered yet), and
        # since when this instance has reached Postgres without a failure (loop time).
        self._claiming = False
        self._claims_started = 0
        self._db_ok_since: float | None = None

    # -- claiming --------------------------------------------------------------------------

    def notify_work(self, payload: str = "") -> None:
        """A runner_submit hint: claim now, unless every job it names needs a backend this
        instance lacks (its claim would find nothing)."""
        if notify.wanted(payload, self._have):
            self.wake.set()

    async def claim_loop(self) -> None:
        failures = 0
        while not self.draining:
            free = self.settings.concurrency - len(self.job_tasks)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self.wake.clear()
            want = min(free, CLAIM_BATCH)
            self._claiming = True
            self._claims_started += 1
            try:
                jobs = await store.claim(
                    self.pool,
                    worker_id=self.instance_id,
                    limit=want,
                    lease_s=self.settings.lease_s,
                    capacity=self.capacity,
                    notifier=self.notifier,
                )
                failures = 0
            except DATABASE_ERRORS as exc:
                self._claiming = False
                failures += 1
                if is_transient(exc):
                    log.warning("claim_failed", error=repr(exc), attempt=failures)
                    await asyncio.sleep(backoff_s(failures))
                else:  # a bug in the statement: say so loudly, and keep the process up
                    log.error("claim_refused", error=repr(exc), attempt=failures)
                    await asyncio.sleep(backoff_s(failures, cap_s=60.0))
                continue
            for job in jobs:
                self._start(job)
            self._claiming = False
            if not jobs and not self.draining:
                # Nothing to claim: the work a hint announced went to another instance (every
                # worker hears every hint). Hints heard meanwhile wake one claim after this
                # pause, so a fleet does not answer each submit with a claim per instance.
                await asyncio.sleep(EMPTY_CLAIM_COOLDOWN_S)
            if len(jobs) < want and not self.draining:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL_S):
                        await self.wake.wait()

    def _start(self, job: store.ClaimedJob) -> None:
        old = self.manager.get(job.id)
        if old is not None:
            # Requeued by another instance during our stall, and claimed back here: the old
            # task's claim is void (no writes); the new one runs once it has ended.
            log.warning("job_reclaimed_while_held", job_id=str(job.id), attempt=job.attempts)
            self.manager.cancel(job.id, StopReason.LEASE_LOST)
            self.supervisor.track(self._start_after(old.task, job), f"reclaim-{job.id}")
            return
        task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
        ctx = self.manager.register(job.id, task, owner=job.owner)
        self.job_tasks.add(task)
        task.add_done_callback(lambda t: self._job_done(job.id, ctx, t))

    async def _start_after(self, old: asyncio.Task[Any], job: store.ClaimedJob) -> None:
        await asyncio.wait([old])
        self._start(job)  # a task holding it by now is stopped in its turn

    def _job_done(self, job_id: uuid.UUID, ctx: JobContext, task: asyncio.Task[None]) -> None:
        self.manager.unregister(job_id)
        self.job_tasks.discard(task)
        self._slot_freed.set()
        if self.capacity.limits:
            self.wake.set()  # a limited backend's slot may be free: claim now, not at the next poll
        self.stops.on_task_done(ctx)
        if not task.cancelled() and task.exception() is not None:
            log.error("job_task_crashed", job_id=str(job_id), error=repr(task.exception()))

    # -- one job ---------------------------------------------------------------------------

    async def _run_job(self, job: store.ClaimedJob) -> None:
        ctx = self.manager.get(job.id)
        assert ctx is not None
        jlog = log.bind(job_id=str(job.id), wallet=job.owner)
        jlog.info("job_started", attempt=job.attempts, executions=len(job.executions))
        remaining = self._remaining(job)
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
                        self._run_execution(ctx, job, execution, jlog), name=f"execution-{execution.id}"
                    )
            if ctx.executions:
                # Awaited directly, so cancelling this task cancels every execution and
                # resumes only once they have all cleaned up (remote cancels sent).
                await asyncio.gather(*ctx.executions.values(), return_exceptions=True)
            if ctx.final_status is not None:  # written with its last execution's result
                written, status = True, ctx.final_status
            else:
                written, status = await self.finals.submit(job.id)
            if written:
                self.metrics.jobs_finished.labels(status).inc()
                jlog.info("job_finished", status=status)
            elif status == "cancelled":
                # Cancelled just as it finished: the task stopped all the same.
                ctx.reason = ctx.reason or StopReason.CANCELLED
            elif status == "running":
                self.unsettled.add(job.id)
                jlog.warning("job_unsettled")
        except asyncio.CancelledError:
            reason = ctx.reason or StopReason.SHUTDOWN
            if reason is StopReason.SHUTDOWN:
                await asyncio.shield(self._requeue(job, jlog))
            elif reason is StopReason.LEASE_LOST:
                jlog.warning("job_lease_lost")
            else:
                # Handed to the stops batcher, which owns the write (and drain awaits it):
                # no await here, so thousands of cancelled tasks end at once.
                self.stops.record(ctx, reason)
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

    def _remaining(self, job: store.ClaimedJob) -> float | None:
        if job.timeout_s is None:
            return None
        elapsed = (datetime.now(UTC) - job.started_at).total_seconds()
        return max(job.timeout_s - elapsed, 0.0)

    async def _requeue(self, job: store.ClaimedJob, jlog: Any) -> None:
        """This instance is stopping: the job goes back to the queue for another."""
        try:
            requeued = await store.requeue_interrupted(
                self.pool, job.id, self.instance_id, notifier=self.notifier
            )
            jlog.info("job_requeued", reason="shutdown", requeued=requeued)
        except Exception:
            jlog.exception("job_requeue_failed")

    # -- one execution -----------------------------------------------------------------------

    async def _run_execution(
        self, ctx: JobContext, job: store.ClaimedJob, execution: store.ClaimedExecution, jlog: Any
    ) -> None:
        xlog = jlog.bind(execution_id=str(execution.id), backend=execution.backend)
        backend = self.backends.get(execution.backend)
        if backend is None:
            await self._write_result(
                ctx,
                store.ExecutionResult(
                    job.id,
                    execution.id,
                    "failed",
                    None,
                    attempts=execution.attempts,
                    error=f"backend {execution.backend!r} is not configured on this instance",
                ),
            )
            return

        async def on_remote_id(remote_id: str, attempts: int, urls: dict[str, str] | None) -> None:
            # Kept until Postgres has it: without it, only this task could cancel the work.
            await until_written(
                lambda: store.set_remote_id(
                    self.pool,
                    execution.id,
                    remote_id,
                    attempts,
                    cancel_grace_s=self.settings.lease_renew_s,
                    urls=urls,
                    notifier=self.notifier,
                ),
                "remote_id",
                execution_id=str(execution.id),
            )
            xlog.info("remote_id_stored", remote_id=remote_id)

        def on_unknown_status(status: str) -> None:
            self.metrics.remote_unknown_statuses.labels(execution.backend).inc()

        deadlines = [d for d in (self._remaining(job), backend.spec.deadline_s) if d is not None]
        call = ExecutionCall(
            job.id,
            execution.id,
            execution.input,
            remote_id=execution.remote_id,
            attempts=execution.attempts,
            on_remote_id=on_remote_id,
            deadline_s=min(deadlines) if deadlines else None,
            remote_urls=execution.remote_urls,
            on_unknown_status=on_unknown_status,
        )
        slots = backend.spec.concurrency
        # Waiting for a turn at a limited backend: a cancel meanwhile ends it, nothing was sent.
        if slots is not None and not await self.slots.take(
            execution.id, execution.backend, slots, job.id, job.owner
        ):
            return
        try:
            await self._run_call(ctx, job, execution, backend, call, xlog)
        finally:
            if slots is not None:
                self.slots.release(execution.backend)

    async def _run_call(
        self,
        ctx: JobContext,
        job: store.ClaimedJob,
        execution: store.ClaimedExecution,
        backend: Backend,
        call: ExecutionCall,
        xlog: Any,
    ) -> None:
        began = time.monotonic()

        def spent() -> float:
            """The provider's own figure of the GPU time, else the time the work ran here."""
            return call.gpu_seconds if call.gpu_seconds is not None else time.monotonic() - began

        try:
            output = await backend.run(call)
        except asyncio.CancelledError:
            if not backend.spec.confirms_stop:  # the work ended with its call: its spend is known
                ctx.spent[execution.id] = spent()
            if await self._backend_must_be_told(ctx, execution.id, backend, call):
                try:
                    await asyncio.shield(
                        self.remote.send(
                            job.id, execution.id, execution.backend, call.remote_id, call.remote_urls
                        )
                    )
                except Exception:
                    # The cancel stays owed ("pending"): the sweeper sends it. Whatever went
                    # wrong here must not replace the CancelledError.
                    xlog.exception("remote_cancel_failed")
            raise
        except BackendError as exc:
            # Work the provider reported over (or forgot) is owed no cancel.
            owes = backend.spec.can_cancel(call.remote_id) and not exc.work_over
            written = await self._write_result(
                ctx,
                store.ExecutionResult(
                    job.id,
                    execution.id,
                    "failed",
                    None,
                    error=str(exc),
                    attempts=call.attempts,
                    owe_remote_cancel=owes,
                    gpu_seconds=spent(),
                ),
                execution.backend,
            )
            xlog.info("execution_failed", error=str(exc), written=written)
            if written and owes:
                # It failed on our side (an answer we cannot use): the GPU may still run.
                await self.remote.send(
                    job.id, execution.id, execution.backend, call.remote_id, call.remote_urls
                )
            return
        except Exception as exc:
            xlog.exception("execution_crashed")
            await self._write_result(
                ctx,
                store.ExecutionResult(
                    job.id,
                    execution.id,
                    "failed",
                    None,
                    attempts=call.attempts,
                    error=f"internal error in the runner ({type(exc).__name__}); it has been logged",
                ),
            )
            return
        try:
            await storable.check_async(output)
        except Unstorable as exc:
            written = await self._write_result(
                ctx,
                store.ExecutionResult(
                    job.id,
                    execution.id,
                    "failed",
                    None,
                    attempts=call.attempts,
                    error=f"the backend's reply cannot be stored: {exc}",
                    gpu_seconds=spent(),
                ),
                execution.backend,
            )
            xlog.warning("execution_reply_unstorable", error=str(exc), written=written)
            return
        written = await self._write_result(
            ctx,
            store.ExecutionResult(
                job.id,
                execution.id,
                "completed",
                output,
                error=None,
                attempts=call.attempts,
                gpu_seconds=spent(),
            ),
            execution.backend,
        )
        xlog.debug("execution_completed", written=written)

    async def _backend_must_be_told(
        self, ctx: JobContext, execution_id: uuid.UUID, backend: Backend, call: ExecutionCall
    ) -> bool:
        """Whether an execution's task, stopping, tells the backend to stop: for a cancel that
        landed (or whose statement failed: the caller meant it), when a cancel can reach the
        work; for a shutdown, an http call with a cancel_url -- it has no remote id to resume
        by, so it is sent again when the job is resumed."""
        own_reason = ctx.execution_reasons.get(execution_id)
        reason = own_reason or ctx.reason
        if reason is StopReason.SHUTDOWN:
            return call.remote_id is None and backend.spec.cancels_without_remote_id
        if reason is None or not reason.is_cancel or not backend.spec.can_cancel(call.remote_id):
            return False
        return (
            own_reason is not None
            or ctx.pending_cancel is None
            or await self.stops.cancel_landed(ctx.pending_cancel) is not False
        )

    async def _write_result(
        self, ctx: JobContext, result: store.ExecutionResult, backend: str | None = None
    ) -> bool:
        """Record an execution's result; True if written. Noted on the job when the same
        statement finished the job. A result Postgres refuses for good is recorded as the
        execution's failure, saying why: the work is never done again for it."""
        try:
            written, final_status = await self.results.submit(result)
        except Exception as exc:
            if not is_database_error(exc) or is_transient(exc):
                raise
            log.error(
                "result_refused",
                job_id=str(result.job_id),
                execution_id=str(result.execution_id),
                error=repr(exc),
            )
            written, final_status = await self.results.submit(
                dataclasses.replace(
                    result,
                    status="failed",
                    output=None,
                    error=f"the runner could not store this execution's result: {exc}",
                )
            )
        if final_status is not None:
            ctx.final_status = final_status
        if written and backend is not None and result.gpu_seconds is not None:
            self.metrics.gpu_seconds.labels(backend, result.status).inc(result.gpu_seconds)
        return written

    # -- shutdown --------------------------------------------------------------------------

    async def _grace(self, grace_s: float, hurry: asyncio.Event) -> None:
        """Until every job task has ended, `grace_s` has passed, or `hurry` is set."""
        jobs_done = asyncio.ensure_future(asyncio.wait(set(self.job_tasks)))
        hurried = asyncio.ensure_future(hurry.wait())
        try:
            await asyncio.wait({jobs_done, hurried}, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            jobs_done.cancel()  # the wait, not the jobs
            hurried.cancel()
            await asyncio.gather(jobs_done, hurried, return_exceptions=True)

    async def drain(self, grace_s: float, hurry: asyncio.Event | None = None) -> None:
        """Stop claiming, let running jobs finish for `grace_s` (or until `hurry` is set: a
        second signal), then interrupt and requeue."""
        self.draining = self.stops.draining = True
        self.wake.set()
        self._slot_freed.set()
        if self.job_tasks:
            log.info("draining", jobs=len(self.job_tasks), grace_s=grace_s)
            await self._grace(grace_s, hurry or asyncio.Event())
            pending = {t for t in self.job_tasks if not t.done()}
            if pending:
                interrupted = self.manager.cancel_all(StopReason.SHUTDOWN)
                log.info("interrupting_jobs", jobs=interrupted)
                await asyncio.gather(*pending, return_exceptions=True)
        await self.supervisor.wait_short()
        await self.results.close()
        await self.finals.close()
        await self.stops.batch.close()
        try:
            await store.end_lease(self.pool, self.instance_id)
        except DATABASE_ERRORS:
            log.warning("end_lease_failed")  # it simply expires
        log.info("drained")
