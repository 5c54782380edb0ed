"""The fleet's housekeeping, every renewal period: requeue what lost instances held (leases),
count the queued jobs no live instance can run and note in their audit trails why they wait,
count the cancels whose work may still run, the queue's gauges -- and, once a minute,
retention. One worker instance of the fleet does it (store.HOUSEKEEPER): it is the same work
whoever does it, and 15 instances each doing it every 5 s put a burst on the database and the
cores three times a second, which the 16-instance cancel p99 paid for. It publishes the
fleet-wide gauges; the other workers show what it published. Its statements are in
runner.worker.store."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import structlog

from runner.config import Settings
from runner.db.notify import Notifier
from runner.metrics import Metrics
from runner.worker import store
from runner.worker.leases import Leases

log = structlog.get_logger("runner.worker.housekeeping")

RETENTION_BATCH = 500
RETENTION_EVERY_S = 60.0


class Housekeeping:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: Metrics,
        leases: Leases,
        notifier: Notifier | None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.leases = leases
        self.instance_id = leases.instance_id
        self.notifier = notifier
        self._retention_ran = float("-inf")

    async def run(self) -> None:
        """One round: on the housekeeper, the whole of it, publishing the fleet-wide gauges
        (runner_jobs_unclaimable, runner_remote_unconfirmed, the queue's, the webhook
        outbox's); elsewhere, those gauges as it last published them (none once it has not
        published for 3 rounds)."""
        keeper = await self.pool.fetchrow(
            store.HOUSEKEEPER, self.instance_id, 3 * self.settings.lease_renew_s
        )
        if not keeper["keeper"]:
            self._show(keeper["figures"] or {})
            return
        await self.leases.requeue_expired()
        rows = await self.pool.fetch(store.UNCLAIMABLE)
        unclaimable = {r["backend"]: r["jobs"] for r in rows}
        if unclaimable:
            await self.note_waiting(sorted(unclaimable))
        figures: dict[str, Any] = {"unclaimable": unclaimable}
        rows = await self.pool.fetch(store.UNCONFIRMED)
        figures["unconfirmed"] = {r["backend"]: r["n"] for r in rows}
        rows = await self.pool.fetch(store.QUEUE)
        figures["queue"] = {r["backend"]: [r["jobs"], max(r["age"], 0.0)] for r in rows}
        figures["webhooks_pending"] = await self.pool.fetchval(store.WEBHOOKS_PENDING)
        self._show(figures)
        await self.pool.execute(store.PUBLISH_GAUGES, figures)
        days = self.settings.retention_days
        now = asyncio.get_running_loop().time()
        if days is not None and now - self._retention_ran >= RETENTION_EVERY_S:
            self._retention_ran = now
            await self.apply_retention(days)

    def _show(self, figures: dict[str, Any]) -> None:
        self.metrics.set_counts(self.metrics.jobs_unclaimable, figures.get("unclaimable", {}))
        self.metrics.set_counts(self.metrics.remote_unconfirmed, figures.get("unconfirmed", {}))
        self.metrics.set_queue({b: (n, age) for b, (n, age) in figures.get("queue", {}).items()})
        self.metrics.webhooks_pending.set(figures.get("webhooks_pending", 0))

    async def note_waiting(self, backends: list[str]) -> int | None:
        """Say in the audit trail of each queued job that needs one of `backends` (which no live
        instance has) why it waits: a `waiting` event, once per reason, which also reaches the
        wallet's event stream. The number noted; None if another instance is at it."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(store.TRY_LOCK, store.WAITING_LOCK_KEY):
                return None
            noted = await conn.fetch(store.NOTE_WAITING, backends)
        if self.notifier is not None:
            for row in noted:
                self.notifier.changed(row["job_id"], row["owner"])
        return len(noted)

    async def apply_retention(self, days: float) -> int:
        """Delete finished jobs older than `days`, with their executions and events, in small
        batches (each its own short transaction); one instance at a time."""
        deleted = 0
        while True:
            batch = await self._delete_finished(days)
            if batch is None:  # another instance is at it
                break
            deleted += batch
            if batch < RETENTION_BATCH:
                break
            await asyncio.sleep(0)  # other work goes first between batches
        if deleted:
            log.info("retention_deleted", jobs=deleted, older_than_days=days)
        return deleted

    async def _delete_finished(self, days: float) -> int | None:
        """Up to RETENTION_BATCH of them in one transaction; None if another instance holds
        the retention lock."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(store.TRY_LOCK, store.RETENTION_LOCK_KEY):
                return None
            await conn.execute(store.RETENTION_ON)
            deleted: int = await conn.fetchval(
                store.DELETE_FINISHED, int(days), (days % 1) * 86400, RETENTION_BATCH
            )
            return deleted
