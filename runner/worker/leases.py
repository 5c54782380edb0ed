"""The worker's leases: renewing them, holding Postgres and memory to each other, requeueing
the jobs of instances that are gone -- and the housekeeping that runs with them (the gauge of
jobs nobody can claim, retention)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import structlog

from runner.cancel.registry import JobContextManager, StopReason
from runner.cancel.stops import StopRecorder
from runner.config import Settings
from runner.db.notify import Notifier
from runner.metrics import Metrics
from runner.supervisor import Supervisor
from runner.worker import housekeeping, store

log = structlog.get_logger("runner.worker.leases")


RETENTION_BATCH = 500
RETENTION_EVERY_S = 60.0


class LeaseKeeping:
    """The lease side of the Worker (a mixin: these are the Worker's own attributes)."""

    pool: asyncpg.Pool
    settings: Settings
    instance_id: str
    manager: JobContextManager
    metrics: Metrics
    supervisor: Supervisor
    stops: StopRecorder
    capacity: store.Capacity
    notifier: Notifier | None
    unsettled: set[uuid.UUID]
    _claiming: bool
    _claims_started: int
    _db_ok_since: float | None
    _retention_ran: float = float("-inf")

    async def renew_leases(self) -> None:
        """Extend our lease, and hold Postgres and memory to each other both ways: held jobs
        that are no longer ours stop here (a cancel whose NOTIFY was lost lands within one
        renewal period); jobs Postgres says run here that no task holds go back to the queue."""
        claims_before, claiming_before = self._claims_started, self._claiming
        try:
            lost, unheld = await store.renew_lease(
                self.pool,
                self.manager.job_ids(),
                self.instance_id,
                self.settings.lease_s,
                self.capacity.backends,
            )
        except BaseException:
            self._db_ok_since = None
            raise
        loop = asyncio.get_running_loop()
        self._db_ok_since = self._db_ok_since or loop.time()
        for job_id, status in lost.items():
            ctx = self.manager.get(job_id)
            if ctx is None or (ctx.reason is not None and ctx.reason.is_cancel):
                continue  # gone, or already stopping for a cancel (its NOTIFY came first)
            reason = StopReason.CANCELLED if status == "cancelled" else StopReason.LEASE_LOST
            if self.manager.cancel(job_id, reason):
                log.info("job_stopped_by_lease_check", job_id=str(job_id), status=status)
        # A claim under way may hold jobs not registered yet: judge them at the next renewal.
        if not claiming_before and not self._claiming and self._claims_started == claims_before:
            await self._requeue_unheld(unheld)
        if self.unsettled:
            await self._settle()

    async def _requeue_unheld(self, unheld: list[uuid.UUID]) -> None:
        """Jobs left `running` under this instance with no task (their task ended without its
        final write): back to the queue at once, keeping the attempt they used. Jobs whose
        final write or owed cancel is still being retried here are not orphans."""
        busy = self.unsettled | self.stops.in_progress
        for job_id in unheld:
            if job_id in busy or self.manager.is_running(job_id):
                continue
            if await store.requeue_interrupted(
                self.pool, job_id, self.instance_id, reason="not_held", notifier=self.notifier
            ):
                log.warning("job_requeued", job_id=str(job_id), reason="not_held")

    async def _settle(self) -> None:
        """Finish jobs whose final write did not happen; requeue those still open."""
        job_ids = list(self.unsettled)
        self.unsettled.clear()
        for job_id, (written, status) in zip(
            job_ids, await store.finalize(self.pool, job_ids, self.instance_id, self.notifier), strict=True
        ):
            if not written and status == "running":
                await store.requeue_interrupted(
                    self.pool, job_id, self.instance_id, reason="unsettled", notifier=self.notifier
                )
                log.warning("job_requeued", job_id=str(job_id), reason="unsettled")

    async def requeue_expired(self) -> None:
        """Requeue the jobs of instances that are gone. An instance that has itself just got
        its database back waits a lease first: the others may be getting theirs back too."""
        loop = asyncio.get_running_loop()
        if self._db_ok_since is None or loop.time() - self._db_ok_since < self.settings.lease_s:
            return
        rows = await store.requeue_expired(
            self.pool,
            max_attempts=self.settings.max_job_attempts,
            lease_s=self.settings.lease_s,
            instance_id=self.instance_id,
            notifier=self.notifier,
        )
        for row in rows:
            log.warning("job_lease_expired", job_id=str(row["id"]), new_status=row["status"])

    async def housekeeping(self) -> None:
        """Every renewal period: requeue what lost instances held, count the queued jobs no
        live instance can run (runner_jobs_unclaimable) and note in their audit trails why
        they wait, and -- once a minute -- retention."""
        await self.requeue_expired()
        unclaimable = await housekeeping.unclaimable(self.pool)
        self.metrics.set_counts(self.metrics.jobs_unclaimable, unclaimable)
        if unclaimable:
            await housekeeping.note_waiting(self.pool, sorted(unclaimable), self.notifier)
        self.metrics.set_counts(self.metrics.remote_unconfirmed, await housekeeping.unconfirmed(self.pool))
        self.metrics.set_queue(await housekeeping.queue(self.pool))
        days = self.settings.retention_days
        now = asyncio.get_running_loop().time()
        if days is not None and now - self._retention_ran >= RETENTION_EVERY_S:
            self._retention_ran = now
            await self.apply_retention(days)

    async def apply_retention(self, days: float) -> int:
        """Delete finished jobs older than `days`, with their executions and events, in small
        batches (each its own short transaction); one instance at a time."""
        deleted = 0
        while True:
            batch = await housekeeping.delete_finished(self.pool, older_than_days=days, limit=RETENTION_BATCH)
            if batch is None:  # another instance is at it
                break
            deleted += batch
            if batch < RETENTION_BATCH:
                break
            await asyncio.sleep(0)  # other work goes first between batches
        if deleted:
            log.info("retention_deleted", jobs=deleted, older_than_days=days)
        return deleted

    def recheck(self) -> None:
        """After the listener reconnects: re-read our jobs now rather than at the next renewal."""
        self.supervisor.track(self.renew_leases(), "lease_recheck")
