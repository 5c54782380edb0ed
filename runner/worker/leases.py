"""The worker's leases: renewing them, holding Postgres and memory to each other, requeueing
the jobs of instances that are gone."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import structlog

from runner.cancel.registry import JobContextManager, StopReason
from runner.cancel.stops import StopRecorder
from runner.config import Settings
from runner.db.notify import Notifier
from runner.supervisor import Supervisor
from runner.worker import store
from runner.worker.claims import Claims
from runner.worker.records import Capacity
from runner.worker.tasks import JobTasks

log = structlog.get_logger("runner.worker.leases")


class Leases:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        instance_id: str,
        manager: JobContextManager,
        capacity: Capacity,
        claims: Claims,
        tasks: JobTasks,
        stops: StopRecorder,
        supervisor: Supervisor,
        notifier: Notifier | None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.instance_id = instance_id
        self.manager = manager
        self.capacity = capacity
        self.claims = claims
        self.tasks = tasks  # their jobs still unsettled are retried here
        self.stops = stops
        self.supervisor = supervisor
        self.notifier = notifier
        # Since when this instance has reached Postgres without a failure (loop time).
        self._db_ok_since: float | None = None
        self._settling = asyncio.Lock()  # a re-check's renewal and the periodic one

    async def renew(self) -> None:
        """Extend our lease, and hold Postgres and memory to each other both ways: held jobs
        that are no longer ours stop here (a cancel whose NOTIFY was lost lands within one
        renewal period); jobs Postgres says run here that no task holds go back to the queue."""
        claims_before, claiming_before = self.claims.started, self.claims.claiming
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
        if not claiming_before and not self.claims.claiming and self.claims.started == claims_before:
            await self._requeue_unheld(unheld)
        if self.tasks.unsettled:
            await self._settle()

    async def _requeue_unheld(self, unheld: list[uuid.UUID]) -> None:
        """Jobs left `running` under this instance with no task (their task ended without its
        final write): back to the queue at once, keeping the attempt they used. Jobs whose
        final write or owed cancel is still being retried here are not orphans."""
        busy = self.tasks.unsettled | self.stops.in_progress
        for job_id in unheld:
            if job_id in busy or self.manager.is_running(job_id):
                continue
            if await store.requeue_interrupted(
                self.pool, job_id, self.instance_id, reason="not_held", notifier=self.notifier
            ):
                log.warning("job_requeued", job_id=str(job_id), reason="not_held")

    async def _settle(self) -> None:
        """Finish jobs whose final write did not happen; requeue those still open. A job
        leaves `unsettled` only once that is written: until then the orphan check
        (_requeue_unheld) leaves it alone, and the next renewal tries again."""
        async with self._settling:
            # One claimed here again meanwhile (requeued elsewhere while Postgres was away)
            # has a task again: that task writes its end; requeueing it would run it twice.
            self.tasks.unsettled -= {j for j in self.tasks.unsettled if self.manager.is_running(j)}
            job_ids = list(self.tasks.unsettled)
            settled = await store.finalize(self.pool, job_ids, self.instance_id, self.notifier)
            for job_id, (written, status) in zip(job_ids, settled, strict=True):
                if not written and status == "running" and not self.manager.is_running(job_id):
                    await store.requeue_interrupted(
                        self.pool, job_id, self.instance_id, reason="unsettled", notifier=self.notifier
                    )
                    log.warning("job_requeued", job_id=str(job_id), reason="unsettled")
                self.tasks.unsettled.discard(job_id)

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

    def recheck(self) -> None:
        """After the listener reconnects: re-read our jobs now rather than at the next renewal."""
        self.supervisor.once("lease_recheck", self.renew)
