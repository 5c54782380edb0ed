"""Waiting for a cancelled job's task to stop, wherever it runs (`?wait=true`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg

from runner.cancel.registry import JobContext
from runner.cancel.statements import NO_TASK_LEFT
from runner.cancel.stops import StopRecorder
from runner.watch import JobWatch

RE_READ_S = 1.0  # without a hint, how often a waiter reads the job's stop record again


async def wait_stopped(
    pool: asyncpg.Pool,
    watch: JobWatch,
    stops: StopRecorder | None,
    job_id: uuid.UUID,
    limit_s: float,
    ctx: JobContext | None,
) -> bool:
    """True once the job's task has stopped and its stop is on record; False after
    `limit_s`. Held here (`ctx`, taken before the cancel): by the stop recorder (`stops`,
    None on an instance that runs no jobs). Elsewhere: on the job's notifications and its
    audit trail."""
    try:
        async with asyncio.timeout(limit_s):
            if ctx is not None and stops is not None:  # only a worker holds tasks
                await stops.until_stopped(ctx)
                return True
            async with watch.watching(job_id) as changed:
                while True:
                    changed.clear()
                    if await pool.fetchval(NO_TASK_LEFT, job_id):
                        return True
                    # A hint may never come (an instance of an older release, a lost
                    # NOTIFY): the row is read again now and then all the same.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RE_READ_S):
                            await changed.wait()
    except TimeoutError:
        return False
