"""GET /jobs/{id}/events: server-sent events carrying the job as it changes (SPEC §5)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web

from api.auth import identity_of
from api.state import RUNTIME
from runner import jobs

PING_S = 15.0


async def job_events(request: web.Request) -> web.StreamResponse:
    runtime, identity = request.app[RUNTIME], identity_of(request)
    job_id = jobs.parse_uuid(request.match_info["job_id"])
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    # Listen before reading, so no change can fall between the read and the LISTEN.
    async with runtime.watch.watching(job_id) as changed:
        # Ownership and existence are checked before the stream starts: they get JSON errors.
        job = await jobs.get_job(runtime.pool, job_id, caller=identity.address, admin=identity.admin)
        await response.prepare(request)
        sent = None
        while True:
            if job != sent:
                await response.write(f"data: {json.dumps(job)}\n\n".encode())
                sent = job
            if job["status"] in jobs.TERMINAL:
                break  # clients close on it (an EventSource would otherwise reconnect)
            try:
                async with asyncio.timeout(PING_S):
                    await changed.wait()
            except TimeoutError:
                await response.write(b": ping\n\n")
            changed.clear()
            # Re-read on every wake and every ping: NOTIFY is a hint, the row is the truth.
            job = await jobs.get_job(runtime.pool, job_id, caller=identity.address,
                                     admin=identity.admin)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
