"""One instance of the service: owns every resource and background task, in one exit stack."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from runner.backends import build_backends, new_http_session
from runner.cancel.canceller import Canceller
from runner.cancel.registry import JobContextManager, StopReason
from runner.cancel.remote import RemoteCanceller
from runner.config import Settings
from runner.db import create_pool, is_transient, migrate, resolve_dsn
from runner.db.listener import CANCEL, SUBMIT, Listener
from runner.metrics import Metrics
from runner.watch import JobWatch
from runner.worker.worker import Worker

log = structlog.get_logger("runner.service")

ROLES = ("all", "api", "worker")


def _instance_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Runtime:
    """What the API handlers and the worker share within one instance."""

    settings: Settings
    dsn: str
    pool: asyncpg.Pool
    role: str = "all"
    listener: Listener | None = None
    instance_id: str = field(default_factory=_instance_id)
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    port: int | None = None
    tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    manager: JobContextManager = field(default_factory=JobContextManager)
    metrics: Metrics = field(default_factory=Metrics)
    worker: Worker | None = None
    canceller: Canceller = field(init=False)
    watch: JobWatch = field(init=False)

    def __post_init__(self) -> None:
        self.metrics.track_running(self.manager.count)
        url_cancels = [n for n, s in self.settings.backends.items() if s.cancels_without_remote_id]
        self.canceller = Canceller(self.pool, self.manager, self.metrics,
                                   remote_cancel_backends=url_cancels,
                                   holder_grace_s=self.settings.lease_renew_s,
                                   instance_id=self.instance_id)
        self.watch = JobWatch(self.listener)
        if self.listener is not None:
            if self.role != "api":
                # Only instances that run jobs act on cancels; an API instance does not even
                # wake for them (every listener is woken at each cancel's commit).
                self.listener.subscribe(CANCEL, self.on_cancel_notification)
            self.listener.on_reconnect(self.watch.wake_all)

    def on_cancel_notification(self, payload: str) -> None:
        """A cancel committed on some instance: stop the tasks here that we hold. The payload
        is "job", "job:execution", or "instance;job,job,..." (a bulk cancel, which the sending
        instance has already signalled locally)."""
        origin, bulk, jobs = payload.partition(";")
        if bulk:
            if origin == self.instance_id:
                return
            payload = jobs
        for entry in payload.split(","):
            job, _, execution = entry.partition(":")
            try:
                job_id = uuid.UUID(job)
                execution_id = uuid.UUID(execution) if execution else None
            except ValueError:
                log.warning("bad_cancel_notification", payload=entry[:100])
                continue
            if execution_id is None:
                self.manager.cancel(job_id, StopReason.CANCELLED)
            else:
                self.manager.cancel_execution(job_id, execution_id, StopReason.CANCELLED)

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start a named background task; stop_tasks() cancels and awaits it."""
        if name in self.tasks:
            coro.close()
            raise RuntimeError(f"a background task named {name} is already running")
        task = asyncio.create_task(coro, name=name)
        self.tasks[name] = task
        task.add_done_callback(self._task_done)
        return task

    def every(self, name: str, interval_s: float, fn: Callable[[], Awaitable[Any]]) -> None:
        """Run `fn` periodically in a named task; an error is logged and the loop goes on."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await fn()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if is_transient(exc):  # the database is away: the next round tries again
                        log.warning("periodic_task_failed", task=name, error=repr(exc))
                    else:
                        log.exception("periodic_task_failed", task=name)

        self.spawn(name, loop())

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_died", task=task.get_name(), error=repr(task.exception()))

    async def stop_tasks(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, role: str = "all", *, dsn: str | None = None,
    hurry: asyncio.Event | None = None,
) -> AsyncIterator[Runtime]:
    """Start an instance (migrations first). On exit, in this order: /readyz turns 503, the
    worker drains (jobs get the grace period, then are requeued), the API stops, the HTTP
    client closes, background tasks are cancelled and awaited, the pool closes."""
    from api.app import create_app, create_metrics_app

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    async with contextlib.AsyncExitStack() as stack:
        if dsn is None:
            dsn, embedded = await resolve_dsn(settings.database_url, settings.data_dir)
            if embedded is not None:
                stack.callback(embedded.stop)
        await migrate(dsn)
        pool = await create_pool(dsn, settings.db_pool_size)
        stack.push_async_callback(pool.close)
        runtime = Runtime(settings=settings, dsn=dsn, pool=pool, role=role, listener=Listener(dsn))
        structlog.contextvars.bind_contextvars(instance=runtime.instance_id)
        stack.push_async_callback(runtime.stop_tasks)

        if role in ("all", "worker"):
            http = new_http_session()
            stack.push_async_callback(http.close)
            runtime.worker = _start_worker(runtime, http)
        app = create_app(runtime) if role in ("all", "api") else None
        assert runtime.listener is not None
        runtime.spawn("listener", runtime.listener.run())
        await runtime.listener.wait_connected()

        if app is not None:
            runtime.port = await _serve_app(stack, app, settings)
            log.info("api_listening", host=settings.host, port=runtime.port)
        if settings.metrics_port is not None:
            await _serve_app(stack, create_metrics_app(runtime), settings, settings.metrics_port)
        if runtime.worker is not None:
            runtime.spawn("worker_claim", runtime.worker.claim_loop())
            stack.push_async_callback(runtime.worker.drain, settings.shutdown_grace_s, hurry)
            log.info("worker_started", concurrency=settings.concurrency)

        stack.callback(runtime.draining.set)
        yield runtime
    log.info("service_stopped")


def _start_worker(runtime: Runtime, http: aiohttp.ClientSession) -> Worker:
    """The worker's parts and its periodic tasks (the claim loop starts once serving)."""
    settings = runtime.settings
    backends = build_backends(settings.backends, http)
    remote = RemoteCanceller(runtime.pool, backends, runtime.metrics, runtime.instance_id)
    worker = Worker(pool=runtime.pool, settings=settings, instance_id=runtime.instance_id,
                    manager=runtime.manager, backends=backends, canceller=runtime.canceller,
                    remote=remote, metrics=runtime.metrics)
    assert runtime.listener is not None
    runtime.listener.subscribe(SUBMIT, worker.notify_work)
    runtime.listener.on_reconnect(worker.recheck)
    runtime.every("lease_renewal", settings.lease_renew_s, worker.renew_leases)
    runtime.every("lease_expiry", settings.lease_renew_s, worker.requeue_expired)
    runtime.every("remote_cancel_sweep", min(1.0, settings.lease_renew_s), remote.sweep)
    return worker


async def _serve_app(stack: contextlib.AsyncExitStack, app: web.Application, settings: Settings,
                     port: int | None = None) -> int | None:
    # aiohttp's keep-alive timer also runs from the moment a connection opens until its first
    # request is whole, so it bounds how long a client may take to send its headers.
    app_runner = web.AppRunner(app, access_log=None, shutdown_timeout=1,
                               keepalive_timeout=settings.read_timeout_s)
    await app_runner.setup()
    stack.push_async_callback(app_runner.cleanup)
    site = web.TCPSite(app_runner, settings.host, settings.port if port is None else port,
                       reuse_address=True)
    await site.start()
    return _bound_port(app_runner)


def _bound_port(app_runner: web.AppRunner) -> int | None:
    for addr in app_runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return None


# The cyclic GC's young-generation threshold. With thousands of jobs in flight the heap holds
# tens of thousands of live tasks, sockets and frames; at the default (700) a burst of
# allocations, such as a cancel-all, triggers collections that traverse all of them
# (measured: 40% of a 3,000-job cancel-all). Cycles are still collected, less often.
GC_GEN0_THRESHOLD = 50_000


async def serve(settings: Settings, role: str, stop: asyncio.Event,
                hurry: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (by a signal handler), then shut down gracefully; `hurry` (a
    second signal) cuts the grace period short."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    async with running_service(settings, role, hurry=hurry):
        gc.freeze()  # what start-up built lives as long as the process: never scan it again
        await stop.wait()
        log.info("shutdown_requested")
