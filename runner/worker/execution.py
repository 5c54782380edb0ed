"""Running one execution: its turn at a limited backend (slots), the backend's call, the
remote id kept as soon as it is known, and its result (results). A cancelled call is handed
to the cancel path (runner.cancel.stopping)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import asyncpg

from runner import storable
from runner.backends import Backend, ExecutionCall
from runner.cancel.registry import JobContext
from runner.cancel.remote import RemoteCanceller
from runner.cancel.stopping import TaskStopping
from runner.config import Settings
from runner.db import until_written
from runner.db.notify import Notifier
from runner.errors import BackendError, Unstorable
from runner.metrics import Metrics
from runner.worker import store
from runner.worker.records import ClaimedExecution, ClaimedJob, ExecutionResult
from runner.worker.results import Results
from runner.worker.slots import Slots


class Executions:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        backends: Mapping[str, Backend],
        results: Results,
        remote: RemoteCanceller,
        stopping: TaskStopping,
        metrics: Metrics,
        notifier: Notifier | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.backends = backends
        self.results = results
        self.remote = remote
        self.stopping = stopping
        self.metrics = metrics
        self.notifier = notifier
        self.slots = Slots(pool, notifier)

    async def run(self, ctx: JobContext, job: ClaimedJob, execution: ClaimedExecution, jlog: Any) -> None:
        xlog = jlog.bind(execution_id=str(execution.id), backend=execution.backend)
        backend = self.backends.get(execution.backend)
        if backend is None:
            await self.results.write(
                ExecutionResult(
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

        deadlines = [d for d in (job.remaining(), backend.spec.deadline_s) if d is not None]
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
            await self._call(ctx, job, execution, backend, call, xlog)
        finally:
            if slots is not None:
                self.slots.release(execution.backend)

    async def _call(
        self,
        ctx: JobContext,
        job: ClaimedJob,
        execution: ClaimedExecution,
        backend: Backend,
        call: ExecutionCall,
        xlog: Any,
    ) -> None:
        began = time.monotonic()

        def spent() -> float:
            """The provider's own figure of the GPU time, else the time the work ran here."""
            return call.gpu_seconds if call.gpu_seconds is not None else time.monotonic() - began

        def result(status: str, output: Any = None, **fields: Any) -> ExecutionResult:
            return ExecutionResult(job.id, execution.id, status, output, attempts=call.attempts, **fields)

        try:
            output = await backend.run(call)
        except asyncio.CancelledError:
            await self.stopping.execution_cancelled(
                ctx, execution.id, execution.backend, backend, call, spent(), xlog
            )
            raise
        except BackendError as exc:
            # Work the provider reported over (or forgot) is owed no cancel.
            owes = backend.spec.can_cancel(call.remote_id) and not exc.work_over
            written = await self.results.write(
                result("failed", error=str(exc), owe_remote_cancel=owes, gpu_seconds=spent()),
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
            error = f"internal error in the runner ({type(exc).__name__}); it has been logged"
            await self.results.write(result("failed", error=error))
            return
        try:
            await storable.check_async(output)
        except Unstorable as exc:
            error = f"the backend's reply cannot be stored: {exc}"
            written = await self.results.write(
                result("failed", error=error, gpu_seconds=spent()), execution.backend
            )
            xlog.warning("execution_reply_unstorable", error=str(exc), written=written)
            return
        written = await self.results.write(
            result("completed", output, error=None, gpu_seconds=spent()), execution.backend
        )
        xlog.debug("execution_completed", written=written)
