"""The /jobs routes (SPEC §5): submit, read, list, audit, cancel."""

from __future__ import annotations

import asyncio
import uuid

import structlog
from aiohttp import web

from api.auth import identity_of
from api.bodies import read_json_object
from api.state import RUNTIME
from api.validation import (
    parse_bool,
    parse_cancel_statuses,
    parse_idempotency_key,
    parse_limit,
    parse_reason,
    parse_status_filter,
    parse_submission,
)
from runner import jobs
from runner.cancel.registry import JobContext
from runner.runtime import Runtime

log = structlog.get_logger("api.jobs")

WAIT_LIMIT_S = 10.0


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def _job_id(request: web.Request) -> uuid.UUID:
    return jobs.parse_uuid(request.match_info["job_id"])


async def submit(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    body = await read_json_object(request)
    submission = parse_submission(body, runtime.settings.backends)
    key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
    job, created = await jobs.submit(
        runtime.pool, owner=identity.address, executions=submission.executions,
        timeout_s=submission.timeout_s, metadata=submission.metadata,
        max_active=runtime.settings.max_active_jobs_per_wallet, idempotency_key=key,
        body_hash=jobs.request_hash(body) if key else None)
    if created:
        log.info("job_submitted", job_id=job["id"], executions=len(job["executions"]))
    return web.json_response(job, status=201)


async def list_jobs(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    page, cursor = await jobs.list_jobs(
        runtime.pool, owner=identity.address,
        statuses=parse_status_filter(request.query.get("status")),
        limit=parse_limit(request.query.get("limit")), cursor=request.query.get("cursor") or None)
    return web.json_response({"jobs": page, "next_cursor": cursor})


async def get_job(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    job = await jobs.get_job(runtime.pool, _job_id(request), caller=identity.address,
                             admin=identity.admin)
    return web.json_response(job)


async def audit(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    events = await jobs.audit(runtime.pool, _job_id(request), caller=identity.address,
                              admin=identity.admin)
    return web.json_response({"events": events})


async def cancel_job(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    job_id = _job_id(request)
    wait = parse_bool("wait", request.query.get("wait"))
    reason = parse_reason(await read_json_object(request, required=False))
    # Taken before the cancel: a task held here may be gone from the map by its reply.
    ctx = runtime.manager.get(job_id) if wait else None
    reply = await runtime.canceller.cancel_job(job_id, actor=identity.address,
                                               admin=identity.admin, reason=reason)
    if wait:
        reply["stopped"] = await wait_stopped(runtime, job_id, WAIT_LIMIT_S, ctx)
    return web.json_response(reply)


async def cancel_execution(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    job_id = _job_id(request)
    execution_id = jobs.parse_uuid(request.match_info["execution_id"], "execution")
    reason = parse_reason(await read_json_object(request, required=False))
    reply = await runtime.canceller.cancel_execution(
        job_id, execution_id, actor=identity.address, admin=identity.admin, reason=reason)
    return web.json_response(reply)


async def cancel_all(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    body = await read_json_object(request, required=False)
    reason = parse_reason(body, extra={"statuses"})
    reply = await runtime.canceller.cancel_all(identity.address,
                                               statuses=parse_cancel_statuses(body), reason=reason)
    return web.json_response(reply)


async def wait_stopped(runtime: Runtime, job_id: uuid.UUID, limit_s: float,
                       ctx: JobContext | None) -> bool:
    """True once the job's task has stopped, wherever it ran (`ctx`: it runs here); False
    after `limit_s`."""
    try:
        async with asyncio.timeout(limit_s):
            if ctx is not None and runtime.worker is not None:  # only a worker holds tasks
                await runtime.worker.until_stopped(ctx)
                return True
            async with runtime.watch.watching(job_id) as changed:
                while True:
                    changed.clear()
                    if await _no_task_left(runtime, job_id):
                        return True
                    await changed.wait()
    except TimeoutError:
        return False


async def _no_task_left(runtime: Runtime, job_id: uuid.UUID) -> bool:
    """No task runs it: its last start was followed by a recorded stop or requeue, or it
    never started."""
    result: bool = await runtime.pool.fetchval(
        """SELECT coalesce(max(id) FILTER (WHERE kind IN ('task_stopped', 'requeued')), 0)
                  >= coalesce(max(id) FILTER (WHERE kind = 'started'), 0)
           FROM job_events WHERE job_id = $1""",
        job_id)
    return result


def setup_jobs(app: web.Application) -> None:
    app.router.add_post("/jobs", submit)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_post("/jobs/cancel", cancel_all)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_get("/jobs/{job_id}/audit", audit)
    app.router.add_post("/jobs/{job_id}/cancel", cancel_job)
    app.router.add_post("/jobs/{job_id}/executions/{execution_id}/cancel", cancel_execution)
