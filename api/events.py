"""Server-sent events: GET /jobs/{id}/events (one job as it changes, until it ends) and
GET /events (every change of the caller's jobs, resumable with Last-Event-ID)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import asyncpg
import structlog
from aiohttp import web

from api import render
from api.auth import identity_of
from api.errors import BadRequest
from api.sessions import Identity
from api.state import RUNTIME
from api.validation import parse_id
from runner import jobs
from runner.db import is_transient
from runner.statuses import TERMINAL

log = structlog.get_logger("api.events")

PING_S = 15.0
T = TypeVar("T")


async def _unless_away(read: Awaitable[T], response: web.StreamResponse) -> T | None:
    """`read`'s result; None while the database is away -- the stream goes on, pinging, and
    reads again once it is back: a short outage does not cut it."""
    try:
        return await read
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.info("event_stream_waiting_for_database", error=repr(exc))
        await response.write(b": database unavailable\n\n")
        return None


@contextlib.contextmanager
def _until_the_client_leaves() -> Iterator[None]:
    """A write that finds the client gone (a closed tab) ends the stream: that is how most
    streams end, not an error."""
    try:
        yield
    except ConnectionResetError:
        log.debug("event_stream_client_gone")


async def _reread(pool: asyncpg.Pool, job_id: uuid.UUID, identity: Identity,
                  response: web.StreamResponse) -> dict[str, Any] | None:
    """The job as it is now; None while the database is away."""
    row = await _unless_away(jobs.get_job(pool, job_id, caller=identity.address, admin=identity.admin),
                             response)
    return None if row is None else render.job(row)


async def job_events(request: web.Request) -> web.StreamResponse:
    runtime, identity = request.app[RUNTIME], identity_of(request)
    job_id = parse_id(request.match_info["job_id"])
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    # Listen before reading, so no change can fall between the read and the LISTEN.
    async with runtime.watch.watching(job_id) as changed:
        # Ownership and existence are checked before the stream starts: they get JSON errors.
        job = render.job(await jobs.get_job(runtime.pool, job_id, caller=identity.address,
                                            admin=identity.admin))
        await response.prepare(request)
        with _until_the_client_leaves():
            await _follow_job(runtime.pool, job_id, identity, job, changed, response)
    return response


async def _follow_job(pool: asyncpg.Pool, job_id: uuid.UUID, identity: Identity, job: dict[str, Any],
                      changed: asyncio.Event, response: web.StreamResponse) -> None:
    sent = None
    while True:
        if job != sent:
            await response.write(f"data: {json.dumps(job)}\n\n".encode())
            sent = job
        if job["status"] in TERMINAL:
            break  # clients close on it (an EventSource would otherwise reconnect)
        try:
            async with asyncio.timeout(PING_S):
                await changed.wait()
        except TimeoutError:
            await response.write(b": ping\n\n")
        changed.clear()
        # Re-read on every wake and every ping: NOTIFY is a hint, the row is the truth.
        job = await _reread(pool, job_id, identity, response) or job
    await response.write_eof()


REPLAY_BATCH = 200


async def wallet_events(request: web.Request) -> web.StreamResponse:
    """GET /events: every change of the caller's jobs on one stream. `id:` is the change's
    audit event id; a reconnect with Last-Event-ID gets what it missed (or an event of type
    `reset` when that history is gone: reload the list)."""
    runtime, identity = request.app[RUNTIME], identity_of(request)
    after = _last_event_id(request)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    # Listen before reading, so no change can fall between the read and the LISTEN.
    async with runtime.watch.watching_wallet(identity.address) as changed:
        low, high = await jobs.event_bounds(runtime.pool)
        await response.prepare(request)
        with _until_the_client_leaves():
            if after is None or after > high:
                # A first connection: the stream starts now; the id lets a reconnect resume here.
                await response.write(f"id: {high}\nevent: ready\ndata: {{}}\n\n".encode())
                after = high
            elif after < low - 1:
                await response.write(f"id: {high}\nevent: reset\ndata: {{}}\n\n".encode())
                after = high
            await _follow_wallet(runtime.pool, identity.address, after, changed, response)
    return response


async def _follow_wallet(pool: asyncpg.Pool, owner: str, after: int, changed: asyncio.Event,
                         response: web.StreamResponse) -> None:
    while True:
        changed.clear()
        rows = await _unless_away(jobs.changed_since(pool, owner=owner, after=after, limit=REPLAY_BATCH),
                                  response) or []
        for row in rows:
            after = row["last_event"]
            await response.write(f"id: {after}\ndata: {json.dumps(render.job(row))}\n\n".encode())
        if len(rows) == REPLAY_BATCH:
            continue  # more behind these
        try:
            async with asyncio.timeout(PING_S):
                await changed.wait()
        except TimeoutError:
            await response.write(b": ping\n\n")


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    # ASCII digits only: str.isdigit() also accepts '²' and other digits int() refuses.
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise BadRequest("Last-Event-ID must be an event id this stream sent")
    return int(raw)
