"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from api import statements
from api.auth import auth_middleware, setup_auth
from api.bodies import BIG_BODIES, READ_TIMEOUT_S, big_body_middleware, json_reply
from api.cors import preflight_middleware, setup_cors
from api.errors import Unavailable, error_middleware
from api.events import job_events, wallet_events
from api.jobs import setup_jobs
from api.openapi import openapi
from api.portal import setup_portal
from api.sessions import Sessions
from api.state import RUNTIME
from api.streams import STREAMS, Streams
from runner.db.notify import AUTH
from runner.runtime import Runtime

MAX_BODY_BYTES = 1024 * 1024  # a submit body of at most 1 MiB
AUTH_CLEANUP_INTERVAL_S = 300.0


async def backends(request: web.Request) -> web.Response:
    """The configured backends, for a portal's form: names and what they can do; never their
    URLs, keys or headers."""
    specs = request.app[RUNTIME].settings.backends
    return json_reply(
        {
            "backends": [
                {
                    "name": spec.name,
                    "kind": spec.kind,
                    "cancels_remotely": spec.cancels_remotely,
                    "concurrency": spec.concurrency,
                }
                for spec in sorted(specs.values(), key=lambda s: s.name)
            ]
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return json_reply({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    problems = []
    if runtime.draining.is_set():
        problems.append("draining")
    if runtime.listener is not None and not runtime.listener.connected:
        problems.append("listener down")
    problems.extend(f"background task {name} died ({why})" for name, why in runtime.supervisor.dead.items())
    try:
        async with asyncio.timeout(2):
            await runtime.pool.fetchval(statements.PING)
    except Exception as exc:  # any failure to reach the database means "not ready"
        problems.append(f"database unreachable ({type(exc).__name__})")
    if problems:
        raise Unavailable("not ready: " + ", ".join(problems), reasons=problems)
    return json_reply({"ok": True})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def http_metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests by route and status. The route is the resource's canonical path
    ('/jobs/{job_id}'), never the URL: one label per job id would grow without bound."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    started, status = time.monotonic(), 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = request.app[RUNTIME].metrics
        metrics.http_requests.labels(method, route, str(status)).inc()
        metrics.http_request_seconds.labels(method, route).observe(time.monotonic() - started)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(runtime: Runtime) -> web.Application:
    """The API of one instance. Background work it needs is started through the runtime."""
    app = web.Application(
        middlewares=[
            http_metrics_middleware,
            error_middleware,
            preflight_middleware,
            big_body_middleware,
            auth_middleware,
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[RUNTIME] = runtime
    app[READ_TIMEOUT_S] = runtime.settings.read_timeout_s
    app[BIG_BODIES] = asyncio.Semaphore(2)
    sessions = Sessions(runtime.pool, runtime.settings)
    streams = app[STREAMS] = Streams(runtime.settings.max_streams_per_wallet, runtime.settings.max_streams)
    sessions.on_revoked.append(streams.end_session)
    if runtime.listener is not None:
        runtime.listener.subscribe(AUTH, sessions.evict)
        runtime.listener.on_reconnect(sessions.clear)
        runtime.supervisor.every("auth_cleanup", AUTH_CLEANUP_INTERVAL_S, sessions.cleanup)
    app.on_cleanup.append(lambda _app: sessions.close())
    setup_cors(app, runtime.settings.cors_origins)
    setup_auth(app, sessions)
    setup_jobs(app)
    app.router.add_get("/jobs/{job_id}/events", job_events)
    app.router.add_get("/events", wallet_events)
    app.router.add_get("/backends", backends)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    if runtime.settings.metrics_port is None:
        app.router.add_get("/metrics", metrics)
    setup_portal(app)
    return app


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    await runtime.metrics.read_database(runtime.pool)
    body = runtime.metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def create_metrics_app(runtime: Runtime) -> web.Application:
    """/metrics alone, for RUNNER_METRICS_PORT: kept off the public URL."""
    app = web.Application(middlewares=[error_middleware])
    app[RUNTIME] = runtime
    app.router.add_get("/metrics", metrics)
    return app


def create_probe_app(runtime: Runtime) -> web.Application:
    """A worker-only instance: /healthz, /readyz and /metrics (unless RUNNER_METRICS_PORT
    takes it), nothing else -- so health checks and Prometheus see every role."""
    app = web.Application(middlewares=[error_middleware])
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if runtime.settings.metrics_port is None:
        app.router.add_get("/metrics", metrics)
    return app
