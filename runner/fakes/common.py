"""What the fakes share: a change signal to wait on, and the providers' time formats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

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


def iso_now() -> str:
    """Replicate's times: ISO 8601 UTC with microseconds and a Z (the recorded cassettes)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
