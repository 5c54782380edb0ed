"""Cancels owed to backends: sent by the task that held the job, and retried by a sweeper on
any instance that has the backend until the backend acknowledges or refuses -- so a job
cancelled while its worker is dead still has its GPU stopped. For queue APIs an
acknowledgement is not a stop: the sweeper then polls the work until the provider reports it
over (`confirmed`, `remote_stopped_at`, where that report proves a stop), and sends the
cancel again, with backoff, while it runs on past `confirm_within_s`; `gone` when the
provider no longer knows the work. Cancels to one backend are paced across every instance
(`cancel_rate_per_s`)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping
from datetime import datetime

import asyncpg
import structlog

from runner.backends import Backend, CancelOutcome, CancelResult
from runner.backends.polling import PollingBackend
from runner.cancel import statements
from runner.db import DATABASE_ERRORS
from runner.db.notify import Notifier
from runner.errors import BackendError, RemoteGone
from runner.metrics import Metrics
from runner.storable import readable

log = structlog.get_logger("runner.cancel.remote")

SEND_TIMEOUT_S = 5.0
SWEEP_BATCH = 100
SWEEP_CONCURRENCY = 4
CLAIM_S = 30  # a claimed row is not picked by another sweeper meanwhile
MAX_BACKOFF_S = 300


class SharedPace:
    """Remote cancels to one backend at most `rate` per second, evenly, across every instance
    (a provider's limit is per endpoint: RunPod allows 100 cancels per 10 s): each send takes
    the next free slot from Postgres and waits for it. While Postgres cannot be reached, this
    instance paces alone."""

    def __init__(self, pool: asyncpg.Pool, backend: str, rate: float) -> None:
        self.pool, self.backend, self.interval = pool, backend, 1.0 / rate
        self.local = TokenBucket(rate)

    async def take(self) -> None:
        try:
            wait = await self.pool.fetchval(statements.CANCEL_PACE, self.backend, self.interval)
        except DATABASE_ERRORS:
            await self.local.take()
            return
        if wait > 0:
            await asyncio.sleep(wait)


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
    def __init__(
        self,
        pool: asyncpg.Pool,
        backends: Mapping[str, Backend],
        metrics: Metrics,
        instance_id: str,
        notifier: Notifier | None = None,
    ) -> None:
        self.pool = pool
        self.notifier = notifier
        self.backends = backends
        self.metrics = metrics
        self.instance_id = instance_id
        self._pace = {
            name: SharedPace(pool, name, rate)
            for name, b in backends.items()
            if (rate := b.spec.cancel_rate) is not None
        }
        self._warned: set[uuid.UUID] = set()

    async def send(
        self,
        job_id: uuid.UUID,
        execution_id: uuid.UUID,
        backend_name: str,
        remote_id: str | None,
        urls: Mapping[str, str] | None = None,
    ) -> CancelResult:
        """Tell the backend to stop (bounded in time) and record its answer."""
        backend = self.backends.get(backend_name)
        if backend is None:
            result = CancelResult(CancelOutcome.FAILED, f"backend {backend_name!r} is not configured here")
        elif not backend.spec.can_cancel(remote_id):
            result = CancelResult(CancelOutcome.FAILED, "no remote id is known to cancel")
        else:
            result = await self._cancel(backend, backend_name, job_id, execution_id, remote_id, urls)
        confirms = backend is not None and backend.spec.confirms_stop
        confirm_in = backend.spec.poll_interval_s if backend is not None and confirms else None
        recorded = await self.pool.fetchrow(
            statements.REMOTE_CANCEL_RECORD,
            job_id,
            execution_id,
            result.outcome.value,
            readable(result.detail),
            self.instance_id,
            MAX_BACKOFF_S,
            result.retry_after,
            confirm_in,
        )
        if recorded is not None and self.notifier is not None:
            self.notifier.changed(job_id, recorded["owner"])
        self.metrics.remote_cancels.labels(backend_name, result.outcome.value).inc()
        log.info(
            "remote_cancel",
            job_id=str(job_id),
            execution_id=str(execution_id),
            backend=backend_name,
            remote_id=remote_id,
            outcome=result.outcome.value,
            answer=result.detail,
        )
        return result

    async def _cancel(
        self,
        backend: Backend,
        backend_name: str,
        job_id: uuid.UUID,
        execution_id: uuid.UUID,
        remote_id: str | None,
        urls: Mapping[str, str] | None,
    ) -> CancelResult:
        pace = self._pace.get(backend_name)
        if pace is not None:
            await pace.take()  # the provider's rate limit: a cancel-all queues here
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                return await backend.cancel_remote(job_id, execution_id, remote_id, urls)
        except TimeoutError:
            return CancelResult(CancelOutcome.RETRY, f"no answer within {SEND_TIMEOUT_S} s")

    async def _record(self, statement: str, *args: object) -> None:
        """Run a statement that changes an execution and returns its job and owner; wake
        whoever watches them."""
        changed = await self.pool.fetchrow(statement, *args)
        if changed is not None and self.notifier is not None:
            self.notifier.changed(changed["job_id"], changed["owner"])

    async def sweep(self) -> int:
        """Send the cancels that are due (their holder is gone, or an earlier try failed), and
        check the acknowledged ones whose work is due a look (any instance with the
        backend, from Postgres)."""
        # Only the backends this instance has: another's owed cancel is left to an instance
        # that can send it (claiming it here would fail it, or hold it back CLAIM_S).
        rows = await self.pool.fetch(statements.SWEEP_DUE, SWEEP_BATCH, CLAIM_S, list(self.backends))
        # A few at a time: a hundred calls at once would fill every turn of the loop, and a
        # cancel arriving meanwhile would wait behind them.
        limit = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def one(row: asyncpg.Record) -> None:
            async with limit:
                if row["remote_cancel"] == "pending":
                    await self.send(
                        row["job_id"], row["id"], row["backend"], row["remote_id"], row["remote_urls"]
                    )
                else:
                    await self._confirm(row)

        await asyncio.gather(*(one(r) for r in rows))
        return len(rows)

    async def _confirm(self, row: asyncpg.Record) -> None:
        """Has the work of an acknowledged cancel stopped? Confirmed when the provider reports
        it over in a way that proves a stop; `gone` when it no longer knows the work; still
        running past confirm_within_s: the cancel is sent again, with backoff."""
        backend = self.backends.get(row["backend"])
        if not isinstance(backend, PollingBackend) or row["remote_id"] is None:
            return
        spec = backend.spec
        next_look = spec.poll_interval_s * random.uniform(0.8, 1.2)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                over = await backend.remote_over(row["remote_id"], row["remote_urls"])
        except RemoteGone as exc:
            await self._record(statements.REMOTE_WORK_GONE, row["id"], self.instance_id, readable(str(exc)))
            self._warned.discard(row["id"])
            log.info(
                "remote_work_gone",
                execution_id=str(row["id"]),
                remote_id=row["remote_id"],
                backend=row["backend"],
                answer=str(exc),
            )
            return
        except (BackendError, TimeoutError) as exc:
            log.info("remote_stop_check_failed", execution_id=str(row["id"]), error=str(exc))
            backoff = min(MAX_BACKOFF_S, next_look * 2 ** min(row["remote_cancel_tries"], 10))
            await self.pool.execute(statements.REMOTE_STILL_RUNNING, row["id"], backoff, 0)
            return
        if over is not None and not over.proves_stop:
            await self._record(
                statements.REMOTE_CANCEL_REPORTED, row["id"], self.instance_id, readable(over.error or "")
            )
            self._warned.discard(row["id"])
            log.info(
                "remote_cancel_reported",
                execution_id=str(row["id"]),
                remote_id=row["remote_id"],
                backend=row["backend"],
                proves_stop=False,
            )
            return
        if over is not None:
            stopped_at: datetime | None = over.stopped_at
            confirmed = await self.pool.fetchrow(
                statements.REMOTE_STOP_CONFIRMED,
                row["id"],
                over.gpu_seconds,
                self.instance_id,
                over.state.value,
                stopped_at,
            )
            after = None if confirmed is None else confirmed["after_cancel_s"]
            if confirmed is not None and self.notifier is not None:
                self.notifier.changed(confirmed["job_id"], confirmed["owner"])
            if after is not None:
                self.metrics.cancel_to_stop_seconds.observe(max(float(after), 0.0))
                if over.gpu_seconds is not None:
                    self.metrics.gpu_seconds.labels(row["backend"], "cancelled").inc(over.gpu_seconds)
                log.info(
                    "remote_stop_confirmed",
                    execution_id=str(row["id"]),
                    remote_id=row["remote_id"],
                    backend=row["backend"],
                    after_cancel_s=round(float(after), 3),
                )
            self._warned.discard(row["id"])
            return
        if (row["acknowledged_s"] or 0) < spec.confirm_within_s:
            await self.pool.execute(statements.REMOTE_STILL_RUNNING, row["id"], next_look, 0)
            return
        if row["id"] not in self._warned:
            self._warned.add(row["id"])
            log.warning(
                "remote_work_runs_on_after_cancel",
                execution_id=str(row["id"]),
                remote_id=row["remote_id"],
                backend=row["backend"],
                acknowledged_s=round(float(row["acknowledged_s"]), 1),
            )
        result = await self._cancel(
            backend, row["backend"], row["job_id"], row["id"], row["remote_id"], row["remote_urls"]
        )
        self.metrics.remote_cancels.labels(row["backend"], f"resent_{result.outcome.value}").inc()
        if result.outcome is CancelOutcome.GONE:
            await self._record(
                statements.REMOTE_WORK_GONE, row["id"], self.instance_id, readable(result.detail)
            )
            return
        backoff = min(MAX_BACKOFF_S, next_look * 2 ** min(row["remote_cancel_tries"], 10))
        await self.pool.execute(
            statements.REMOTE_STILL_RUNNING, row["id"], max(backoff, result.retry_after or 0), 1
        )
