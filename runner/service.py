"""The one place that wires the daemon and the API together: starts an instance (migrations,
pool, listener, worker, HTTP) in one exit stack, and stops it in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from api import render
from api.app import create_app, create_metrics_app, create_probe_app
from runner.backends import build_backends, new_http_session
from runner.backends.base import HttpBackendBase
from runner.cancel.remote import RemoteCanceller
from runner.config import Settings
from runner.db import create_pool, migrate, resolve_dsn
from runner.db import listener as db_listener
from runner.db.listener import POOLER, Listener
from runner.db.notify import PROBE, SUBMIT, WATCH_RENEW_S
from runner.db.pool import describe_dsn
from runner.errors import MigrationError, StartupError
from runner.runtime import ROLES, Runtime
from runner.webhooks.delivery import LONGEST_WAIT_S, WAKE_CHANNEL, WebhookSender
from runner.worker.worker import Worker

log = structlog.get_logger("runner.service")


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings,
    role: str = "all",
    *,
    dsn: str | None = None,
    hurry: asyncio.Event | None = None,
) -> AsyncIterator[Runtime]:
    """Start an instance (migrations first). On exit, in this order: /readyz turns 503, the
    worker drains (jobs get the grace period, then are requeued), the API stops, the HTTP
    client closes, background tasks are cancelled and awaited, the pool closes."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    async with contextlib.AsyncExitStack() as stack:
        embedded = None
        if dsn is None:
            dsn, embedded = await resolve_dsn(settings.database_url, settings.data_dir)
            if embedded is not None:
                stack.callback(embedded.stop)
        await migrate_database(dsn)
        async with _starting(dsn):
            pool = await create_pool(dsn, settings.db_pool_size)
        stack.push_async_callback(pool.close)
        runtime = Runtime(settings=settings, dsn=dsn, pool=pool, role=role, listener=Listener(dsn))
        stack.push_async_callback(runtime.notifier.close)  # before the pool closes
        structlog.contextvars.bind_contextvars(instance=runtime.instance_id)
        stack.push_async_callback(runtime.supervisor.stop)
        if embedded is not None:
            runtime.supervisor.spawn("embedded_postgres", embedded.keep_running)

        if role in ("all", "worker"):
            http = new_http_session()
            stack.push_async_callback(http.close)
            runtime.worker = _start_worker(runtime, http)
            _start_webhooks(runtime, stack)
        # A worker-only instance serves its probes and metrics, nothing else.
        app = create_app(runtime) if role in ("all", "api") else create_probe_app(runtime)
        if runtime.watch.pool is not None:  # an instance with the API: its watchers' keys
            runtime.supervisor.every("watch_renewal", WATCH_RENEW_S, runtime.watch.renew)
        assert runtime.listener is not None
        runtime.supervisor.spawn("listener", runtime.listener.run)
        runtime.supervisor.spawn("loop_lag", runtime.metrics.watch_loop_lag)
        await _notify_self_test(runtime.listener, pool, dsn)

        runtime.port = await _serve_app(stack, app, settings)
        log.info("api_listening", host=settings.host, port=runtime.port, role=role)
        if settings.metrics_port is not None:
            await _serve_app(stack, create_metrics_app(runtime), settings, settings.metrics_port)
        if runtime.worker is not None:
            runtime.supervisor.spawn("worker_claim", runtime.worker.claim_loop)
            stack.push_async_callback(runtime.worker.drain, settings.shutdown_grace_s, hurry)
            log.info("worker_started", concurrency=settings.concurrency)

        stack.callback(runtime.draining.set)
        yield runtime
    log.info("service_stopped")


@contextlib.asynccontextmanager
async def _starting(dsn: str) -> AsyncIterator[None]:
    """A failure to reach or use the database at start-up becomes one line naming where."""
    try:
        yield
    except (MigrationError, asyncio.CancelledError):
        raise
    except Exception as exc:
        if _lost_by_a_pooler(exc):
            raise StartupError(f"cannot use the database at {describe_dsn(dsn)}: {POOLER}") from exc
        reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        raise StartupError(f"cannot use the database at {describe_dsn(dsn)}: {reason}") from exc


def _lost_by_a_pooler(exc: BaseException) -> bool:
    """A prepared statement that vanished or already exists: the statements of one session
    went to several server connections, as through a transaction-mode pooler."""
    return isinstance(exc, asyncpg.InvalidSQLStatementNameError | asyncpg.DuplicatePreparedStatementError)


# How long the listener may take to connect once migrations and the pool have worked.
LISTENER_CONNECT_TIMEOUT_S = 30.0


async def _notify_self_test(listener: Listener, pool: asyncpg.Pool, dsn: str) -> None:
    """SPEC section 2: NOTIFY ourselves and wait for it on the listener's connection. Sent on
    another (pool) connection as one simple-protocol statement, which any pooler passes."""

    async def send(payload: str) -> None:  # a hex nonce: nothing to escape
        async with pool.acquire() as conn:
            await conn.execute(f"NOTIFY {PROBE}, '{payload}'")

    try:
        async with asyncio.timeout(LISTENER_CONNECT_TIMEOUT_S):
            await listener.wait_connected()
    except TimeoutError:
        error = listener.last_error
        reason = (str(error).splitlines() or [""])[0] if error is not None else "no answer"
        if error is not None and _lost_by_a_pooler(error):
            reason = POOLER
        raise StartupError(f"the listener cannot use the database at {describe_dsn(dsn)}: {reason}") from None
    async with _starting(dsn):
        took = await listener.self_test(send)
    if took is None:
        waited = db_listener.SELF_TEST_TIMEOUT_S
        log.error("notify_self_test_failed", timeout_s=waited)
        raise StartupError(
            f"a NOTIFY sent at start-up did not come back within {waited:g} s "
            f"on the listener's connection to {describe_dsn(dsn)}: {POOLER}"
        )
    log.info("notify_self_test_passed", ms=round(took * 1000, 3))


async def migrate_database(dsn: str) -> list[str]:
    """Apply pending migrations (`runner migrate`, and every start)."""
    async with _starting(dsn):
        return await migrate(dsn)


def _start_worker(runtime: Runtime, http: aiohttp.ClientSession) -> Worker:
    """The worker's parts and its periodic tasks (the claim loop starts once serving)."""
    settings = runtime.settings
    backends = build_backends(settings.backends, http)
    for backend in backends.values():  # their calls' latency and errors, on this instance's /metrics
        if isinstance(backend, HttpBackendBase):
            backend.metrics = runtime.metrics
    remote = RemoteCanceller(runtime.pool, backends, runtime.metrics, runtime.instance_id, runtime.notifier)
    supervisor = runtime.supervisor
    worker = Worker(
        pool=runtime.pool,
        settings=settings,
        instance_id=runtime.instance_id,
        manager=runtime.manager,
        backends=backends,
        canceller=runtime.canceller,
        remote=remote,
        metrics=runtime.metrics,
        supervisor=supervisor,
        notifier=runtime.notifier,
    )
    assert runtime.listener is not None
    runtime.listener.subscribe(SUBMIT, worker.notify_work)
    runtime.listener.on_reconnect(worker.recheck)
    supervisor.every("lease_renewal", settings.lease_renew_s, worker.renew_leases)
    supervisor.every("housekeeping", settings.lease_renew_s, worker.housekeeping)
    supervisor.every("remote_cancel_sweep", min(1.0, settings.lease_renew_s), remote.sweep)
    return worker


def _start_webhooks(runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """Any worker instance delivers the webhook outbox: a claim when the next row comes due,
    and at once on a NOTIFY from the triggers (migration 0014)."""
    sender = WebhookSender(runtime.pool, runtime.settings, runtime.metrics, runtime.instance_id, render.job)
    stack.push_async_callback(sender.close)
    assert runtime.listener is not None
    runtime.listener.subscribe(WAKE_CHANNEL, sender.wake)
    runtime.listener.on_reconnect(sender.wake)  # a NOTIFY may have been lost meanwhile
    runtime.supervisor.paced("webhook_delivery", LONGEST_WAIT_S, sender.tick, sender.woken)


async def _serve_app(
    stack: contextlib.AsyncExitStack, app: web.Application, settings: Settings, port: int | None = None
) -> int | None:
    # aiohttp's keep-alive timer also runs from the moment a connection opens until its first
    # request is whole, so it bounds how long a client may take to send its headers.
    app_runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=1, keepalive_timeout=settings.read_timeout_s
    )
    await app_runner.setup()
    stack.push_async_callback(app_runner.cleanup)
    port = settings.port if port is None else port
    site = web.TCPSite(app_runner, settings.host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {settings.host}:{port}: {exc.strerror or exc}") from exc
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


async def serve(
    settings: Settings, role: str, stop: asyncio.Event, hurry: asyncio.Event | None = None
) -> None:
    """Run until `stop` is set (by a signal handler), then shut down gracefully; `hurry` (a
    second signal) cuts the grace period short."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    async with running_service(settings, role, hurry=hurry):
        gc.freeze()  # what start-up built lives as long as the process: never scan it again
        await stop.wait()
        log.info("shutdown_requested")
