"""Results: an execution's result and a job's final status, written in batches (one statement
and one WAL flush for many jobs; the results' statement also finishes the jobs whose last
execution it records). It keeps, for each job, the final status written with a result."""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg
import structlog

from runner.db import is_database_error, is_transient
from runner.db.batch import Batcher
from runner.db.notify import Notifier
from runner.metrics import Metrics
from runner.worker import store
from runner.worker.records import ExecutionResult

log = structlog.get_logger("runner.worker.results")


class Results:
    def __init__(
        self, pool: asyncpg.Pool, instance_id: str, metrics: Metrics, notifier: Notifier | None = None
    ) -> None:
        self.metrics = metrics
        self.results: Batcher[ExecutionResult, tuple[bool, str | None]] = Batcher(
            "execution_results", lambda items: store.write_results(pool, items, instance_id, notifier)
        )
        self.finals: Batcher[uuid.UUID, tuple[bool, str]] = Batcher(
            "finalize", lambda ids: store.finalize(pool, ids, instance_id, notifier)
        )
        # Jobs finished by their last execution's result: the job's task reads it once.
        self._final: dict[uuid.UUID, str] = {}

    async def write(self, result: ExecutionResult, backend: str | None = None) -> bool:
        """Record an execution's result; True if written. A result Postgres refuses for good
        is recorded as the execution's failure, saying why: the work is never done again for
        it. The GPU-seconds of a written result count under `backend`, if given."""
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
            self._final[result.job_id] = final_status
        if written and backend is not None and result.gpu_seconds is not None:
            self.metrics.gpu_seconds.labels(backend, result.status).inc(result.gpu_seconds)
        return written

    async def finish(self, job_id: uuid.UUID) -> tuple[bool, str]:
        """The job's executions have ended: (written, status) of its final write -- made
        already with its last result, or now."""
        status = self._final.pop(job_id, None)
        if status is not None:
            return True, status
        return await self.finals.submit(job_id)

    def forget(self, job_id: uuid.UUID) -> None:
        """The job's task has ended."""
        self._final.pop(job_id, None)

    async def close(self) -> None:
        await self.results.close()
        await self.finals.close()
