"""The worker, composed of its parts, each owning its state: claiming (claims), the job tasks
(tasks), running one execution (execution), the results' writes (results), the leases
(leases), the housekeeping (housekeeping) -- and, from the cancel path, the stop recorder
(runner.cancel.stops) and what a cancelled task does (runner.cancel.stopping)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import asyncpg
import structlog

from runner.backends import Backend
from runner.cancel.canceller import Canceller
from runner.cancel.registry import JobContextManager
from runner.cancel.remote import RemoteCanceller
from runner.cancel.stopping import TaskStopping
from runner.cancel.stops import StopRecorder
from runner.config import Settings
from runner.db import DATABASE_ERRORS
from runner.db.notify import Notifier
from runner.metrics import Metrics
from runner.supervisor import Supervisor
from runner.worker import store
from runner.worker.claims import Claims
from runner.worker.execution import Executions
from runner.worker.housekeeping import Housekeeping
from runner.worker.leases import Leases
from runner.worker.records import Capacity
from runner.worker.results import Results
from runner.worker.tasks import JobTasks

log = structlog.get_logger("runner.worker.worker")


class Worker:
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
        self.instance_id = instance_id
        self.supervisor = supervisor
        capacity = Capacity(
            sorted(backends),
            {name: b.spec.concurrency for name, b in backends.items() if b.spec.concurrency is not None},
        )
        self.stops = StopRecorder(pool, instance_id, canceller, metrics, supervisor.track, notifier)
        stopping = TaskStopping(remote, self.stops, supervisor.track)
        self.results = Results(pool, instance_id, metrics, notifier)
        executions = Executions(pool, settings, backends, self.results, remote, stopping, metrics, notifier)
        self.tasks = JobTasks(
            pool,
            instance_id,
            manager,
            executions,
            self.results,
            stopping,
            canceller,
            metrics,
            supervisor,
            on_ended=lambda: self.claims.job_ended(),
            notifier=notifier,
        )
        self.claims = Claims(
            pool,
            settings,
            instance_id,
            capacity,
            start=self.tasks.start,
            running=self.tasks.count,
            notifier=notifier,
        )
        self.leases = Leases(
            pool,
            settings,
            instance_id,
            manager,
            capacity,
            self.claims,
            self.tasks,
            self.stops,
            supervisor,
            notifier,
        )
        self.keeping = Housekeeping(pool, settings, metrics, self.leases, notifier)
        # What the service wires to the listener and the supervisor.
        self.notify_work = self.claims.notify_work
        self.claim_loop = self.claims.loop
        self.renew_leases = self.leases.renew
        self.recheck = self.leases.recheck
        self.housekeeping = self.keeping.run
        self.apply_retention = self.keeping.apply_retention

    @property
    def draining(self) -> bool:
        return self.claims.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        """No more claims (set by drain; a test's frozen instance sets it alone)."""
        self.claims.draining = value

    async def drain(self, grace_s: float, hurry: asyncio.Event | None = None) -> None:
        """Stop claiming, let running jobs finish for `grace_s` (or until `hurry` is set: a
        second signal), then interrupt and requeue."""
        self.claims.stop()
        self.stops.draining = True
        await self.tasks.wind_down(grace_s, hurry or asyncio.Event())
        await self.supervisor.wait_short()
        await self.results.close()
        await self.stops.batch.close()
        try:
            await store.end_lease(self.pool, self.instance_id)
        except DATABASE_ERRORS:
            log.warning("end_lease_failed")  # it simply expires
        log.info("drained")
