"""One instance of the service: owns every resource and background task, in one exit stack."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from runner.config import Settings
from runner.db import create_pool, migrate, resolve_dsn
from runner.listener import Listener

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
                except Exception:
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
    settings: Settings, role: str = "all", *, dsn: str | None = None
) -> AsyncIterator[Runtime]:
    """Start an instance (migrations first); on exit, drain and stop everything it started."""
    from api.app import create_app

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

        app = create_app(runtime) if role in ("all", "api") else None
        assert runtime.listener is not None
        runtime.spawn("listener", runtime.listener.run())
        await runtime.listener.wait_connected()

        if app is not None:
            app_runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
            await app_runner.setup()
            stack.push_async_callback(app_runner.cleanup)
            site = web.TCPSite(app_runner, settings.host, settings.port, reuse_address=True)
            await site.start()
            runtime.port = _bound_port(app_runner)
            log.info("api_listening", host=settings.host, port=runtime.port)

        # Draining comes first on the way out: /readyz turns 503 before anything stops.
        stack.callback(runtime.draining.set)
        yield runtime
    log.info("service_stopped")


def _bound_port(app_runner: web.AppRunner) -> int | None:
    for addr in app_runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return None


async def serve(settings: Settings, role: str, stop: asyncio.Event) -> None:
    """Run until `stop` is set (by a signal handler), then shut down gracefully."""
    async with running_service(settings, role):
        await stop.wait()
        log.info("shutdown_requested")
