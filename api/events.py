"""Server-sent events: GET /jobs/{id}/events (one job as it changes, until it ends) and
GET /events (every change of the caller's jobs, resumable with Last-Event-ID)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import uuid
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import asyncpg
import structlog
from aiohttp import web

from api import render, statements
from api.auth import SESSIONS, identity_of
from api.errors import BadRequest
from api.sessions import Identity
from api.state import RUNTIME
from api.streams import STREAMS, Stream, seconds_left
from api.validation import parse_id
from runner import jobs, jsontext
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


async def _reread(
    pool: asyncpg.Pool, job_id: uuid.UUID, identity: Identity, response: web.StreamResponse
) -> dict[str, Any] | None:
    """The job as it is now; None while the database is away."""
    row = await _unless_away(
        jobs.get_job(pool, job_id, caller=identity.address, admin=identity.admin), response
    )
    return None if row is None else render.job(row)


async def job_events(request: web.Request) -> web.StreamResponse:
    runtime, identity = request.app[RUNTIME], identity_of(request)
    job_id = parse_id(request.match_info["job_id"])
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    # Listen before reading, so no change can fall between the read and the LISTEN.
    async with runtime.watch.watching(job_id) as changed:
        with request.app[STREAMS].opened(identity, changed) as stream:
            # Ownership and existence are checked before the stream starts: they get JSON errors.
            job = render.job(
                await jobs.get_job(runtime.pool, job_id, caller=identity.address, admin=identity.admin)
            )
            await response.prepare(request)
            with _until_the_client_leaves():
                await _follow_job(request, job_id, identity, job, stream, response)
    return response


async def _follow_job(
    request: web.Request,
    job_id: uuid.UUID,
    identity: Identity,
    job: dict[str, Any],
    stream: Stream,
    response: web.StreamResponse,
) -> None:
    pool = request.app[RUNTIME].pool
    sent = None
    while True:
        if job != sent:
            await response.write(f"data: {jsontext.dumps(job)}\n\n".encode())
            sent = job
        if job["status"] in TERMINAL:
            break  # clients close on it (an EventSource would otherwise reconnect)
        if await _wait(request, identity, stream, response):
            break
        # Re-read on every wake and every ping: NOTIFY is a hint, the row is the truth.
        job = await _reread(pool, job_id, identity, response) or job
    await response.write_eof()


async def _wait(
    request: web.Request, identity: Identity, stream: Stream, response: web.StreamResponse
) -> bool:
    """Until the stream's subject changes, or a ping is due (a ping re-checks the session);
    True once the stream must end: its session was revoked or has expired (then said on the
    stream as an event `signed_out`)."""
    try:
        async with asyncio.timeout(min(PING_S, max(seconds_left(identity), 0.0))):
            await stream.wake.wait()
    except TimeoutError:
        if seconds_left(identity) > 0 and await _session_live(request, identity, response):
            await response.write(b": ping\n\n")
        else:
            stream.ended = stream.ended or "signed_out"
    stream.wake.clear()
    if stream.ended is None:
        return False
    await response.write(b'event: signed_out\ndata: {"reason": "the session was signed out or expired"}\n\n')
    return True


async def _session_live(request: web.Request, identity: Identity, response: web.StreamResponse) -> bool:
    """Whether the stream's session still holds (a logout whose NOTIFY was lost); taken as
    yes while the database is away."""
    live = await _unless_away(request.app[SESSIONS].by_hash(identity.token_hash), response)
    return live is not None or not await _database_up(request)


async def _database_up(request: web.Request) -> bool:
    try:
        await request.app[RUNTIME].pool.fetchval(statements.PING)
    except Exception as exc:
        if not is_transient(exc):
            raise
        return False
    return True


REPLAY_BATCH = 200


async def wallet_events(request: web.Request) -> web.StreamResponse:
    """GET /events: every change of the caller's jobs on one stream. `id:` is the change's
    audit event id; a reconnect with Last-Event-ID gets what it missed (or an event of type
    `reset` when that history is gone: reload the list)."""
    runtime, identity = request.app[RUNTIME], identity_of(request)
    after = _last_event_id(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    # Listen before reading, so no change can fall between the read and the LISTEN.
    async with runtime.watch.watching_wallet(identity.address) as changed:
        with request.app[STREAMS].opened(identity, changed) as stream:
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
                await _follow_wallet(request, identity, after, stream, response)
    return response


async def _follow_wallet(
    request: web.Request, identity: Identity, after: int, stream: Stream, response: web.StreamResponse
) -> None:
    pool, owner = request.app[RUNTIME].pool, identity.address
    while True:
        stream.wake.clear()
        # The wallet's streams woken by one change ask the same: one query, rendered once.
        events = (
            await _unless_away(
                request.app[STREAMS].shared((owner, after), functools.partial(_changes, pool, owner, after)),
                response,
            )
            or []
        )
        for event_id, event in events:
            await response.write(event)
            after = event_id
        if len(events) == REPLAY_BATCH:
            continue  # more behind these
        if await _wait(request, identity, stream, response):
            await response.write_eof()
            return


async def _changes(pool: asyncpg.Pool, owner: str, after: int) -> list[tuple[int, bytes]]:
    rows = await jobs.changed_since(pool, owner=owner, after=after, limit=REPLAY_BATCH)
    return [
        (row["last_event"], f"id: {row['last_event']}\ndata: {jsontext.dumps(render.job(row))}\n\n".encode())
        for row in rows
    ]


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    # ASCII digits only: str.isdigit() also accepts '²' and other digits int() refuses.
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise BadRequest("Last-Event-ID must be an event id this stream sent")
    return int(raw)
