"""Queue-style APIs (RunPod, Replicate, fal): submit, store the remote id, poll it to the end."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from runner.backends.base import ExecutionCall, HttpBackendBase
from runner.errors import PermanentBackendError
from runner.storable import text_problem

MAX_REMOTE_ID = 500
# Status polls are spread by +-20%: jobs claimed together would otherwise poll together for
# good, and a burst of hundreds of polls fills the loop's turns (a cancel arriving then
# waits behind it) and reaches the provider as a spike.
POLL_JITTER = 0.2


class State(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Poll:
    state: State
    output: Any = None
    error: str | None = None
    gpu_seconds: float | None = None  # the provider's figure, when it reports one


class PollingBackend(HttpBackendBase):
    async def submit(self, call: ExecutionCall) -> str:
        raise NotImplementedError

    async def poll(self, remote_id: str) -> Poll:
        raise NotImplementedError

    async def remote_over(self, remote_id: str) -> Poll | None:
        """The work's state when it is over (done, failed or cancelled at the provider), or
        None while it runs -- how a remote cancel is confirmed."""
        status: Poll = await self.poll(remote_id)
        return None if status.state is State.PENDING else status

    async def result(self, remote_id: str, poll: Poll) -> Any:
        """The output once completed; most APIs return it with the status."""
        return poll.output

    async def run(self, call: ExecutionCall) -> Any:
        if call.remote_id is None:
            remote_id = await self.retrying(lambda: self.submit(call), submits=call)
            await call.set_remote_id(remote_id)
        else:
            remote_id = call.remote_id  # resumed after a lost lease: never submitted twice
        while True:
            status = await self.retrying(lambda: self.poll(remote_id))
            if status.gpu_seconds is not None:
                call.gpu_seconds = status.gpu_seconds
            if status.state is State.FAILED:
                raise PermanentBackendError(status.error or "the backend reported a failure")
            if status.state is State.COMPLETED:
                break
            await asyncio.sleep(next_poll_in(self.spec.poll_interval_s))
        return await self.retrying(lambda: self.result(remote_id, status))


def next_poll_in(interval_s: float) -> float:
    return interval_s * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)


def seconds_from(value: Any, scale: float = 1.0) -> float | None:
    """A provider's duration field as seconds (None when absent or not a finite number)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value) * scale
    return None


def remote_id_from(body: Any, key: str, what: str) -> str:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise PermanentBackendError(f"{what}: the reply has no {key!r}: {str(body)[:200]}")
    if len(value) > MAX_REMOTE_ID or text_problem(value):
        raise PermanentBackendError(f"{what}: the reply's {key!r} is not an id we can store: {value[:100]!r}")
    return value


def unexpected_status(what: str, status: Any) -> PermanentBackendError:
    return PermanentBackendError(f"{what}: unexpected status {status!r}")
