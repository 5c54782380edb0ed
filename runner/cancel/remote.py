"""Cancels owed to backends: sent by the task that held the job,
and retried by a sweeper on any instance until the backend acknowledges or refuses -- so a
job cancelled while its worker is dead still has its GPU stopped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

import asyncpg
import structlog

from runner.backends import Backend, CancelOutcome, CancelResult
from runner.metrics import Metrics
from runner.storable import readable

log = structlog.get_logger("runner.cancel.remote")

SEND_TIMEOUT_S = 5.0
SWEEP_BATCH = 100
CLAIM_S = 30  # a claimed row is not picked by another sweeper meanwhile
MAX_BACKOFF_S = 300

_RECORD = """
WITH ex AS (
    UPDATE executions SET
        remote_cancel = CASE $3 WHEN 'acknowledged' THEN 'acknowledged'
                                WHEN 'failed' THEN 'failed' ELSE 'pending' END,
        remote_cancel_error = CASE WHEN $3 = 'acknowledged' THEN NULL ELSE $4 END,
        error = CASE WHEN $3 = 'failed' THEN 'remote cancel refused: ' || $4 ELSE error END,
        remote_cancel_tries = remote_cancel_tries + 1,
        remote_cancel_due = CASE WHEN $3 = 'retry'
            THEN now() + make_interval(secs => least($6::int, 2 ^ (remote_cancel_tries + 1))) END
    WHERE id = $2 AND remote_cancel = 'pending'
    RETURNING id, job_id, remote_id, remote_cancel_tries)
INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
SELECT $1, ex.id, 'remote_cancel', $5, jsonb_build_object(
    'outcome', $3::text, 'answer', $4::text, 'remote_id', ex.remote_id, 'try', ex.remote_cancel_tries)
FROM ex, runner_notify_job(ex.job_id)"""


class RemoteCanceller:
    def __init__(self, pool: asyncpg.Pool, backends: Mapping[str, Backend], metrics: Metrics,
                 instance_id: str) -> None:
        self.pool = pool
        self.backends = backends
        self.metrics = metrics
        self.instance_id = instance_id

    async def send(self, job_id: uuid.UUID, execution_id: uuid.UUID, backend_name: str,
                   remote_id: str | None) -> CancelResult:
        """Tell the backend to stop (bounded in time) and record its answer."""
        backend = self.backends.get(backend_name)
        if backend is None:
            result = CancelResult(CancelOutcome.FAILED, f"backend {backend_name!r} is not configured here")
        elif not backend.spec.can_cancel(remote_id):
            result = CancelResult(CancelOutcome.FAILED, "no remote id is known to cancel")
        else:
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    result = await backend.cancel_remote(job_id, execution_id, remote_id)
            except TimeoutError:
                result = CancelResult(CancelOutcome.RETRY, f"no answer within {SEND_TIMEOUT_S} s")
        await self.pool.execute(_RECORD, job_id, execution_id, result.outcome.value,
                                readable(result.detail), self.instance_id, MAX_BACKOFF_S)
        self.metrics.remote_cancels.labels(backend_name, result.outcome.value).inc()
        log.info("remote_cancel", job_id=str(job_id), execution_id=str(execution_id),
                 backend=backend_name, remote_id=remote_id, outcome=result.outcome.value,
                 answer=result.detail)
        return result

    async def sweep(self) -> int:
        """Send the cancels that are due (their holder is gone, or an earlier try failed)."""
        rows = await self.pool.fetch(
            """WITH due AS (
                   SELECT id FROM executions
                   WHERE remote_cancel = 'pending' AND remote_cancel_due <= now()
                   ORDER BY remote_cancel_due LIMIT $1 FOR UPDATE SKIP LOCKED)
               UPDATE executions e SET remote_cancel_due = now() + make_interval(secs => $2)
               FROM due WHERE e.id = due.id
               RETURNING e.id, e.job_id, e.backend, e.remote_id""",
            SWEEP_BATCH, CLAIM_S)
        await asyncio.gather(*(self.send(r["job_id"], r["id"], r["backend"], r["remote_id"])
                               for r in rows))
        return len(rows)
