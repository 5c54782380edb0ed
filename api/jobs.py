"""The /jobs routes: submit, read, list, audit, cancel. Each parses its request, calls the
daemon, and renders what it returns (api.render); no SQL, no daemon logic here."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import structlog
from aiohttp import web

from api import render
from api.auth import identity_of
from api.bodies import iso, json_reply, read_json_object
from api.errors import BadRequest
from api.filtering import parse_body_filter, parse_query_filter
from api.state import RUNTIME
from api.validation import (
    parse_bool,
    parse_id,
    parse_idempotency_key,
    parse_limit,
    parse_reason,
    parse_rerun,
    parse_submission,
    parse_time,
)
from runner import jobs
from runner.cancel.waiting import wait_stopped
from runner.runtime import Runtime
from runner.webhooks.addresses import Refused, check_destination
from runner.webhooks.signing import current_secret, rotate_secret

log = structlog.get_logger("api.jobs")

WAIT_LIMIT_S = 10.0


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def _job_id(request: web.Request) -> uuid.UUID:
    return parse_id(request.match_info["job_id"])


async def submit(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    body = await read_json_object(request)
    submission = parse_submission(
        body, runtime.settings.backends, allow_http=runtime.settings.webhook_allow_http
    )
    if submission.webhook is not None:
        try:
            await check_destination(submission.webhook, allow_private=runtime.settings.webhook_allow_private)
        except Refused as exc:
            raise BadRequest(f"'webhook' {exc}") from None
    key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
    job, created = await jobs.submit(
        runtime.pool,
        owner=identity.address,
        executions=submission.executions,
        timeout_s=submission.timeout_s,
        metadata=submission.metadata,
        webhook=submission.webhook,
        webhook_events=submission.webhook_events,
        max_active=runtime.settings.max_active_jobs_per_wallet,
        idempotency_key=key,
        per_minute=runtime.settings.max_submits_per_minute,
        body_hash=jobs.request_hash(body) if key else None,
        notifier=runtime.notifier,
        concurrency_key=submission.concurrency_key,
        supersede=runtime.canceller if submission.supersede else None,
    )
    if created:
        log.info("job_submitted", job_id=str(job["id"]), executions=len(job["executions"]))
    return json_reply(render.job(job), status=201)


async def list_jobs(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    page, cursor = await jobs.list_jobs(
        runtime.pool,
        owner=identity.address,
        job_filter=parse_query_filter(request.query),
        limit=parse_limit(request.query.get("limit")),
        cursor=request.query.get("cursor") or None,
        max_bytes=runtime.settings.max_page_bytes,
    )
    return json_reply({"jobs": [render.job(j) for j in page], "next_cursor": cursor})


async def get_job(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    job = await jobs.get_job(runtime.pool, _job_id(request), caller=identity.address, admin=identity.admin)
    return json_reply(render.job(job))


async def audit(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    events = await jobs.audit(runtime.pool, _job_id(request), caller=identity.address, admin=identity.admin)
    return json_reply({"events": [render.audit_event(e) for e in events]})


async def cancel_job(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    job_id = _job_id(request)
    wait = parse_bool("wait", request.query.get("wait"))
    reason = parse_reason(await read_json_object(request, required=False))
    # Taken before the cancel: a task held here may be gone from the map by its reply.
    ctx = runtime.manager.get(job_id) if wait else None
    outcome = await runtime.canceller.cancel_job(
        job_id, actor=identity.address, admin=identity.admin, reason=reason
    )
    reply = render.job_cancel(outcome)
    if wait:
        stops = runtime.worker.stops if runtime.worker is not None else None
        reply["stopped"] = await wait_stopped(runtime.pool, runtime.watch, stops, job_id, WAIT_LIMIT_S, ctx)
    return json_reply(reply)


async def cancel_execution(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    job_id = _job_id(request)
    execution_id = parse_id(request.match_info["execution_id"], "execution")
    reason = parse_reason(await read_json_object(request, required=False))
    outcome = await runtime.canceller.cancel_execution(
        job_id, execution_id, actor=identity.address, admin=identity.admin, reason=reason
    )
    return json_reply(render.execution_cancel(outcome))


async def cancel_all(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    body = await read_json_object(request, required=False)
    job_filter = parse_body_filter(body, extra={"reason", "dry_run"})
    reason = parse_reason({k: v for k, v in body.items() if k == "reason"})
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("'dry_run' must be true or false")
    if dry_run:
        found = await runtime.canceller.dry_run(identity.address, job_filter)
        return json_reply(render.dry_run(found))
    outcome = await runtime.canceller.cancel_all(identity.address, reason=reason, job_filter=job_filter)
    return json_reply(render.bulk_cancel(outcome))


async def rerun(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    job_id = _job_id(request)
    body = await read_json_object(request, required=False)
    named = parse_rerun(body)
    key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
    job, created = await jobs.rerun(
        runtime.pool,
        job_id,
        caller=identity.address,
        admin=identity.admin,
        executions=named,
        max_active=runtime.settings.max_active_jobs_per_wallet,
        idempotency_key=key,
        per_minute=runtime.settings.max_submits_per_minute,
        body_hash=jobs.request_hash({"rerun": str(job_id), **body}) if key else None,
        notifier=runtime.notifier,
    )
    if created:
        log.info("job_rerun", job_id=str(job["id"]), rerun_of=str(job_id))
    return json_reply(render.job(job), status=201)


async def usage(request: web.Request) -> web.Response:
    runtime, identity = _runtime(request), identity_of(request)
    until = parse_time("until", request.query.get("until")) or datetime.now(UTC)
    since = parse_time("since", request.query.get("since"))
    if since is None:
        try:
            since = until - timedelta(days=30)
        except OverflowError:  # the 30 days before `until` start before year 1
            raise BadRequest("'until' is too early to count 30 days back from; give 'since' too") from None
    if since >= until:
        raise BadRequest("'since' must be before 'until'")
    spend = await jobs.usage(runtime.pool, owner=identity.address, since=since, until=until)
    return json_reply({"address": identity.address, "since": iso(since), "until": iso(until), **spend})


def setup_jobs(app: web.Application) -> None:
    app.router.add_post("/jobs", submit)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_post("/jobs/cancel", cancel_all)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_get("/jobs/{job_id}/audit", audit)
    app.router.add_post("/jobs/{job_id}/cancel", cancel_job)
    app.router.add_post("/jobs/{job_id}/executions/{execution_id}/cancel", cancel_execution)
    app.router.add_post("/jobs/{job_id}/rerun", rerun)
    app.router.add_get("/usage", usage)
    app.router.add_get("/webhooks/secret", webhook_secret)
    app.router.add_post("/webhooks/secret/rotate", rotate_webhook_secret)


async def webhook_secret(request: web.Request) -> web.Response:
    """The wallet's webhook signing secret, created on first use."""
    runtime, identity = _runtime(request), identity_of(request)
    return json_reply({"secret": await current_secret(runtime.pool, identity.address)})


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    """A new signing secret; deliveries are signed with the old one too for 24 h."""
    runtime, identity = _runtime(request), identity_of(request)
    await read_json_object(request, required=False)
    return json_reply({"secret": await rotate_secret(runtime.pool, identity.address)})
