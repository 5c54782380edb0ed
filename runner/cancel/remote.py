"""Cancels owed to backends: sent by the task that held the job, and retried by a sweeper on
any instance until the backend acknowledges or refuses -- so a job cancelled while its
worker is dead still has its GPU stopped. For queue APIs an acknowledgement is not a stop:
the sweeper then polls the work until the provider reports it over (`confirmed`,
`remote_stopped_at`), and sends the cancel again, with backoff, while it runs on past
`confirm_within_s`. Cancels to one backend are paced (`cancel_rate_per_s`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping

import asyncpg
import structlog

from runner.backends import Backend, CancelOutcome, CancelResult
from runner.backends.polling import PollingBackend
from runner.db.notify import Notifier
from runner.errors import BackendError
from runner.metrics import Metrics
from runner.storable import readable

log = structlog.get_logger("runner.cancel.remote")

SEND_TIMEOUT_S = 5.0
SWEEP_BATCH = 100
SWEEP_CONCURRENCY = 4
CLAIM_S = 30  # a claimed row is not picked by another sweeper meanwhile
MAX_BACKOFF_S = 300

# $1 job, $2 execution, $3 outcome, $4 answer, $5 instance, $6 backoff cap, $7 Retry-After
# (seconds or null), $8 when to poll an acknowledged cancel's work (seconds; null: never).
_RECORD = """
WITH ex AS (
    UPDATE executions SET
        remote_cancel = CASE $3 WHEN 'acknowledged' THEN 'acknowledged'
                                WHEN 'failed' THEN 'failed' ELSE 'pending' END,
        remote_cancel_error = CASE WHEN $3 = 'acknowledged' THEN NULL ELSE $4 END,
        error = CASE WHEN $3 = 'failed' THEN 'remote cancel refused: ' || $4 ELSE error END,
        remote_cancel_tries = remote_cancel_tries + 1,
        remote_cancel_acknowledged_at = CASE WHEN $3 = 'acknowledged' THEN now() END,
        remote_cancel_due = CASE
            WHEN $3 = 'retry' THEN now() + make_interval(secs => greatest(
                coalesce($7::float8, 0), least($6::int, 2 ^ (remote_cancel_tries + 1))))
            WHEN $3 = 'acknowledged' AND $8::float8 IS NOT NULL THEN now() + make_interval(secs => $8) END
    WHERE id = $2 AND remote_cancel = 'pending'
    RETURNING id, job_id, remote_id, remote_cancel_tries),
ev AS (
    INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
    SELECT $1, ex.id, 'remote_cancel', $5, jsonb_build_object(
        'outcome', $3::text, 'answer', $4::text, 'remote_id', ex.remote_id, 'try', ex.remote_cancel_tries)
    FROM ex)
SELECT j.owner FROM ex JOIN jobs j ON j.id = ex.job_id"""


# An acknowledged cancel whose work is over: confirmed, with when and what it cost.
# $1 execution, $2 the provider's GPU-seconds (or null), $3 instance, $4 the answer.
_CONFIRM = """
WITH ex AS (
    UPDATE executions SET remote_cancel = 'confirmed', remote_stopped_at = now(), remote_cancel_due = NULL,
        gpu_seconds = coalesce($2::float8, gpu_seconds)
    WHERE id = $1 AND remote_cancel = 'acknowledged'
    RETURNING id, job_id, remote_id, extract(epoch FROM now() - finished_at) AS after_cancel_s),
ev AS (
    INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
    SELECT ex.job_id, ex.id, 'remote_stop_confirmed', $3, jsonb_build_object(
        'remote_id', ex.remote_id, 'answer', $4::text, 'after_cancel_s', round(ex.after_cancel_s::numeric, 3))
    FROM ex)
SELECT ex.after_cancel_s, ex.job_id, j.owner FROM ex JOIN jobs j ON j.id = ex.job_id"""

# Still running: poll again after $2 seconds; $3: a cancel was sent again (tries + 1).
_STILL_RUNNING = """
UPDATE executions SET remote_cancel_due = now() + make_interval(secs => $2),
    remote_cancel_tries = remote_cancel_tries + $3::int
WHERE id = $1 AND remote_cancel = 'acknowledged'"""


class TokenBucket:
    """Pacing: at most `rate` per second on average, bursts of `burst`; take() waits its turn
    (the caller's own task waits, nothing else does)."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self.rate, self.burst = rate, max(burst, 1.0)
        self.tokens = self.burst
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:  # first come, first served
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class RemoteCanceller:
    def __init__(self, pool: asyncpg.Pool, backends: Mapping[str, Backend], metrics: Metrics,
                 instance_id: str, notifier: Notifier | None = None) -> None:
        self.pool = pool
        self.notifier = notifier
        self.backends = backends
        self.metrics = metrics
        self.instance_id = instance_id
        self._pace = {name: TokenBucket(rate) for name, b in backends.items()
                      if (rate := b.spec.cancel_rate) is not None}
        self._warned: set[uuid.UUID] = set()

    async def send(self, job_id: uuid.UUID, execution_id: uuid.UUID, backend_name: str,
                   remote_id: str | None) -> CancelResult:
        """Tell the backend to stop (bounded in time) and record its answer."""
        backend = self.backends.get(backend_name)
        if backend is None:
            result = CancelResult(CancelOutcome.FAILED, f"backend {backend_name!r} is not configured here")
        elif not backend.spec.can_cancel(remote_id):
            result = CancelResult(CancelOutcome.FAILED, "no remote id is known to cancel")
        else:
            result = await self._cancel(backend, backend_name, job_id, execution_id, remote_id)
        confirms = backend is not None and backend.spec.confirms_stop
        confirm_in = backend.spec.poll_interval_s if backend is not None and confirms else None
        recorded = await self.pool.fetchrow(_RECORD, job_id, execution_id, result.outcome.value,
                                            readable(result.detail), self.instance_id, MAX_BACKOFF_S,
                                            result.retry_after, confirm_in)
        if recorded is not None and self.notifier is not None:
            self.notifier.changed(job_id, recorded["owner"])
        self.metrics.remote_cancels.labels(backend_name, result.outcome.value).inc()
        log.info("remote_cancel", job_id=str(job_id), execution_id=str(execution_id),
                 backend=backend_name, remote_id=remote_id, outcome=result.outcome.value,
                 answer=result.detail)
        return result

    async def _cancel(self, backend: Backend, backend_name: str, job_id: uuid.UUID,
                      execution_id: uuid.UUID, remote_id: str | None) -> CancelResult:
        pace = self._pace.get(backend_name)
        if pace is not None:
            await pace.take()  # the provider's rate limit: a cancel-all queues here
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                return await backend.cancel_remote(job_id, execution_id, remote_id)
        except TimeoutError:
            return CancelResult(CancelOutcome.RETRY, f"no answer within {SEND_TIMEOUT_S} s")

    async def sweep(self) -> int:
        """Send the cancels that are due (their holder is gone, or an earlier try failed), and
        check the acknowledged ones whose work is due a look (any instance, from Postgres)."""
        rows = await self.pool.fetch(
            """WITH due AS (
                   SELECT id FROM executions
                   WHERE remote_cancel IN ('pending', 'acknowledged') AND remote_cancel_due <= now()
                   ORDER BY remote_cancel_due LIMIT $1 FOR UPDATE SKIP LOCKED)
               UPDATE executions e SET remote_cancel_due = now() + make_interval(secs => $2)
               FROM due WHERE e.id = due.id
               RETURNING e.id, e.job_id, e.backend, e.remote_id, e.remote_cancel, e.remote_cancel_tries,
                   extract(epoch FROM now() - e.remote_cancel_acknowledged_at) AS acknowledged_s""",
            SWEEP_BATCH, CLAIM_S)
        # A few at a time: a hundred calls at once would fill every turn of the loop, and a
        # cancel arriving meanwhile would wait behind them.
        limit = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def one(row: asyncpg.Record) -> None:
            async with limit:
                if row["remote_cancel"] == "pending":
                    await self.send(row["job_id"], row["id"], row["backend"], row["remote_id"])
                else:
                    await self._confirm(row)

        await asyncio.gather(*(one(r) for r in rows))
        return len(rows)

    async def _confirm(self, row: asyncpg.Record) -> None:
        """Has the work of an acknowledged cancel stopped? Confirmed when the provider says
        so; still running past confirm_within_s: the cancel is sent again, with backoff."""
        backend = self.backends.get(row["backend"])
        if backend is None or not isinstance(backend, PollingBackend) or row["remote_id"] is None:
            return  # another instance, which has the backend, looks at it
        spec = backend.spec
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                over = await backend.remote_over(row["remote_id"])
        except (BackendError, TimeoutError) as exc:
            log.info("remote_stop_check_failed", execution_id=str(row["id"]), error=str(exc))
            await self.pool.execute(_STILL_RUNNING, row["id"], spec.poll_interval_s, 0)
            return
        if over is not None:
            confirmed = await self.pool.fetchrow(_CONFIRM, row["id"], over.gpu_seconds, self.instance_id,
                                                 over.state.value)
            after = None if confirmed is None else confirmed["after_cancel_s"]
            if confirmed is not None and self.notifier is not None:
                self.notifier.changed(confirmed["job_id"], confirmed["owner"])
            if after is not None:
                self.metrics.cancel_to_stop_seconds.observe(max(float(after), 0.0))
                if over.gpu_seconds is not None:
                    self.metrics.gpu_seconds.labels(row["backend"], "cancelled").inc(over.gpu_seconds)
                log.info("remote_stop_confirmed", execution_id=str(row["id"]), remote_id=row["remote_id"],
                         backend=row["backend"], after_cancel_s=round(float(after), 3))
            self._warned.discard(row["id"])
            return
        if (row["acknowledged_s"] or 0) < spec.confirm_within_s:
            await self.pool.execute(_STILL_RUNNING, row["id"], spec.poll_interval_s, 0)
            return
        if row["id"] not in self._warned:
            self._warned.add(row["id"])
            log.warning("remote_work_runs_on_after_cancel", execution_id=str(row["id"]),
                        remote_id=row["remote_id"], backend=row["backend"],
                        acknowledged_s=round(float(row["acknowledged_s"]), 1))
        result = await self._cancel(backend, row["backend"], row["job_id"], row["id"], row["remote_id"])
        self.metrics.remote_cancels.labels(row["backend"], f"resent_{result.outcome.value}").inc()
        backoff = min(MAX_BACKOFF_S, spec.poll_interval_s * 2 ** min(row["remote_cancel_tries"], 10))
        await self.pool.execute(_STILL_RUNNING, row["id"], max(backoff, result.retry_after or 0), 1)
