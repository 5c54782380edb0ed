"""runner.cancel.stops: waiting for a cancel that was signalled ahead of its commit."""

from __future__ import annotations

import asyncio
from typing import cast

import asyncpg
import pytest

from runner.cancel.canceller import Canceller
from runner.cancel.registry import PendingCancel
from runner.cancel.stops import StopRecorder
from runner.metrics import Metrics


def _recorder() -> StopRecorder:
    def spawn(coro: object, name: str) -> asyncio.Task[None]:
        raise AssertionError("nothing is spawned here")

    # Neither the pool nor the canceller is reached without an owed cancel.
    return StopRecorder(cast(asyncpg.Pool, None), "instance", cast(Canceller, None), Metrics(), spawn)


async def test_a_cancelled_statement_is_not_taken_for_this_tasks_own_cancellation() -> None:
    recorder = _recorder()
    loop = asyncio.get_running_loop()
    interrupted: asyncio.Future[None] = loop.create_future()
    interrupted.cancel()
    # The cancel is not known to be on record (None, not False): the GPU is to be told to stop
    # all the same.
    assert await recorder.cancel_landed(PendingCancel("0xA", False, None, interrupted)) is None

    under_way: asyncio.Future[None] = loop.create_future()
    waiter = asyncio.create_task(recorder.cancel_landed(PendingCancel("0xA", False, None, under_way)))
    await asyncio.sleep(0)  # one loop turn: the waiter is now awaiting the statement
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter  # its own cancellation is never swallowed
    assert not under_way.done()  # shielded: the statement goes on
    under_way.cancel()
