"""What the fakes share: a change signal to wait on, slow status answers, and the providers'
time formats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

STEP_TIMEOUT_S = 30.0


class Watched:
    """State a test (or the demo) waits on: every change sets `changed`; `until` waits for a
    condition without polling on a timer."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def touch(self) -> None:
        self.changed.set()

    async def until(self, condition: Callable[[], bool], within_s: float = STEP_TIMEOUT_S) -> None:
        async with asyncio.timeout(within_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


class SlowStatus(Protocol):
    """A fake whose status answers can be made slow (RunPod's, Replicate's)."""

    status_delay_s: float
    status_open: int
    status_open_max: int


async def answer_slowly(fake: SlowStatus) -> None:
    """A slow provider: each status answer takes `status_delay_s`; counts how many such
    answers are open at once (a test's proof that polls do not pile up)."""
    if not fake.status_delay_s:
        return
    fake.status_open += 1
    fake.status_open_max = max(fake.status_open_max, fake.status_open)
    try:
        await asyncio.sleep(fake.status_delay_s)
    finally:
        fake.status_open -= 1


def iso_now() -> str:
    """Replicate's times: ISO 8601 UTC with microseconds and a Z (the recorded cassettes)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
