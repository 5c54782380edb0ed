"""What one instance shares between its parts: settings, the pool, the listener, the job
registry, the canceller, the task supervisor. A container, built and torn down by
runner.service; it never imports the API."""

from __future__ import annotations

import asyncio
import socket
import uuid
from dataclasses import dataclass, field

import asyncpg

from runner.cancel.canceller import Canceller
from runner.cancel.registry import JobContextManager, StopReason
from runner.config import Settings
from runner.db import notify
from runner.db.listener import Listener
from runner.metrics import Metrics
from runner.supervisor import Supervisor
from runner.watch import JobWatch
from runner.worker.worker import Worker

ROLES = ("all", "api", "worker")


def _instance_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Runtime:
    settings: Settings
    dsn: str
    pool: asyncpg.Pool
    role: str = "all"
    listener: Listener | None = None
    instance_id: str = field(default_factory=_instance_id)
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    port: int | None = None
    supervisor: Supervisor = field(default_factory=Supervisor)
    manager: JobContextManager = field(default_factory=JobContextManager)
    metrics: Metrics = field(default_factory=Metrics)
    worker: Worker | None = None
    canceller: Canceller = field(init=False)
    watch: JobWatch = field(init=False)
    notifier: notify.Notifier = field(init=False)

    def __post_init__(self) -> None:
        self.metrics.track_running(self.manager.count)
        self.notifier = notify.Notifier(self.pool)
        url_cancels = [n for n, s in self.settings.backends.items() if s.cancels_without_remote_id]
        self.canceller = Canceller(
            self.pool,
            self.manager,
            self.metrics,
            remote_cancel_backends=url_cancels,
            holder_grace_s=self.settings.lease_renew_s,
            instance_id=self.instance_id,
            notifier=self.notifier,
        )
        self.watch = JobWatch(self.pool if self.role != "worker" else None)
        if self.listener is not None:
            if self.role != "api":
                # Only instances that run jobs act on cancels; an API instance does not even
                # LISTEN for them, so its Python is not woken by them.
                self.listener.subscribe(notify.cancel_channel(self.instance_id), self.on_cancel_notification)
            if self.role != "worker":
                # Only instances with the API have watchers (event streams, `?wait=true`).
                self.listener.subscribe(notify.CHANGE, self.watch.on_change)
            self.listener.on_reconnect(self._rewatch)

    def _rewatch(self) -> None:
        """After a listener reconnect: every waiter re-reads now (a hint may have been lost),
        and again once the keys watched here are registered again (a crash empties their
        table)."""
        self.watch.wake_all()
        if self.watch.pool is not None:
            self.supervisor.once("watch_reregister", self.watch.reregister)

    def on_cancel_notification(self, payload: str) -> None:
        """A cancel committed on some instance: stop the tasks here that we hold."""
        for job_id, execution_id in notify.decode_cancel(payload):
            if execution_id is None:
                self.manager.cancel(job_id, StopReason.CANCELLED)
            else:
                self.manager.cancel_execution(job_id, execution_id, StopReason.CANCELLED)
