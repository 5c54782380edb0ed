"""Claiming: the claim loop, what wakes it (a runner_submit hint, a freed slot, the poll), and
the state the lease check reads (claims under way)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg
import structlog

from runner.config import Settings
from runner.db import DATABASE_ERRORS, backoff_s, is_transient, notify
from runner.db.notify import Notifier
from runner.worker import store
from runner.worker.records import Capacity, ClaimedJob

log = structlog.get_logger("runner.worker.claims")

CLAIM_BATCH = 100
POLL_INTERVAL_S = 2.0  # the fallback when a NOTIFY of new work is lost
EMPTY_CLAIM_COOLDOWN_S = 0.1  # after a claim that found nothing (River's fetch cooldown: 100 ms)


class Claims:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        instance_id: str,
        capacity: Capacity,
        *,
        start: Callable[[ClaimedJob], None],
        running: Callable[[], int],
        notifier: Notifier | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.instance_id = instance_id
        self.capacity = capacity
        self.start = start  # runs a claimed job
        self.running = running  # how many jobs run here
        self.notifier = notifier
        self.wake = asyncio.Event()
        self.draining = False
        self._have = frozenset(capacity.backends)
        self._slot_freed = asyncio.Event()
        # For the lease check: a claim under way (its jobs may not be registered yet), and
        # how many have started.
        self.claiming = False
        self.started = 0

    def notify_work(self, payload: str = "") -> None:
        """A runner_submit hint: claim now, unless every job it names needs a backend this
        instance lacks (its claim would find nothing)."""
        if notify.wanted(payload, self._have):
            self.wake.set()

    def job_ended(self) -> None:
        self._slot_freed.set()
        if self.capacity.limits:
            self.wake.set()  # a limited backend's slot may be free: claim now, not at the next poll

    def stop(self) -> None:
        self.draining = True
        self.wake.set()
        self._slot_freed.set()

    async def loop(self) -> None:
        failures = 0
        while not self.draining:
            free = self.settings.concurrency - self.running()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self.wake.clear()
            want = min(free, CLAIM_BATCH)
            self.claiming = True
            self.started += 1
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
                self.claiming = False
                failures += 1
                if is_transient(exc):
                    log.warning("claim_failed", error=repr(exc), attempt=failures)
                    await asyncio.sleep(backoff_s(failures))
                else:  # a bug in the statement: say so loudly, and keep the process up
                    log.error("claim_refused", error=repr(exc), attempt=failures)
                    await asyncio.sleep(backoff_s(failures, cap_s=60.0))
                continue
            for job in jobs:
                self.start(job)
            self.claiming = False
            if not jobs and not self.draining:
                # Nothing to claim: the work a hint announced went to another instance (every
                # worker hears every hint). Hints heard meanwhile wake one claim after this
                # pause, so a fleet does not answer each submit with a claim per instance.
                await asyncio.sleep(EMPTY_CLAIM_COOLDOWN_S)
            if len(jobs) < want and not self.draining:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL_S):
                        await self.wake.wait()
