"""Queue-style APIs (RunPod, Replicate, fal): submit, store the remote id, poll it to the end."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import structlog

from runner.backends.base import ExecutionCall, HttpBackendBase, require_object
from runner.errors import PermanentBackendError, RemoteGone, TransientBackendError
from runner.storable import text_problem

log = structlog.get_logger("runner.backends")

MAX_REMOTE_ID = 500
# Status polls are spread by +-20%: jobs claimed together would otherwise poll together for
# good, and a burst of hundreds of polls fills the loop's turns (a cancel arriving then
# waits behind it) and reaches the provider as a spike.
POLL_JITTER = 0.2
# Past the work's deadline, failed polls go on this much longer before the execution fails:
# the provider ends the work at the deadline and may take a moment to say so.
DEADLINE_GRACE_S = 30.0


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
    # Over after a cancel: whether this report proves the work itself stopped (RunPod's
    # CANCELLED does not: it is answered at once, whatever the worker goes on doing).
    proves_stop: bool = True
    stopped_at: datetime | None = None  # the provider's own end time, when it gives one
    unknown: str | None = None  # PENDING because the status is one the runner does not know


@dataclass(frozen=True, slots=True)
class Remote:
    """What a submission returns: the remote id, and any URLs to reach the work by."""

    id: str
    urls: dict[str, str] | None = None


class PollingBackend(HttpBackendBase):
    deadline_grace_s: float = DEADLINE_GRACE_S

    async def submit(self, call: ExecutionCall) -> Remote:
        raise NotImplementedError

    async def poll(
        self, remote_id: str, urls: Mapping[str, str] | None = None, deadline_s: float | None = None
    ) -> Poll:
        """The work's state; `deadline_s`: the deadline it was given, for the error that names
        it when the provider ended the work there."""
        raise NotImplementedError

    async def remote_over(self, remote_id: str, urls: Mapping[str, str] | None = None) -> Poll | None:
        """The work's state when it is over (done, failed or cancelled at the provider), or
        None while it runs -- how a remote cancel is confirmed. RemoteGone when the provider
        no longer knows it."""
        status = await self.poll(remote_id, urls)
        return None if status.state is State.PENDING else status

    async def result(self, remote_id: str, poll: Poll, urls: Mapping[str, str] | None = None) -> Any:
        """The output once completed; most APIs return it with the status."""
        return poll.output

    async def status_body(self, url: str, what: str, gone: str) -> dict[str, Any]:
        """A status poll's JSON object. A 404: the provider forgot the work (`gone` says how it
        does), so the execution fails and nothing more is polled."""
        try:
            return require_object(await self.request("GET", url, what), what)
        except PermanentBackendError as exc:
            if exc.status == 404:
                raise RemoteGone(f"{exc} -- {gone}") from None
            raise

    async def run(self, call: ExecutionCall) -> Any:
        if call.remote_id is None:
            remote: Remote = await self.retrying(lambda: self.submit(call), submits=call)
            await call.set_remote_id(remote.id, remote.urls)
        remote_id = call.remote_id  # resumed after a lost lease: never submitted twice
        assert remote_id is not None
        deadline = (
            None if call.deadline_s is None else time.monotonic() + call.deadline_s + self.deadline_grace_s
        )
        failures = 0
        unknown: set[str] = set()
        while True:
            try:
                status = await self.poll(remote_id, call.remote_urls, call.deadline_s)
            except TransientBackendError as exc:
                # A failed poll says nothing of the work: back off and ask again, until the
                # work's deadline. Healthy work is never failed or cancelled for it.
                failures += 1
                if deadline is not None and time.monotonic() >= deadline:
                    raise TransientBackendError(
                        f"{exc}; no status could be had until the work's deadline "
                        f"({call.deadline_s:.0f} s) passed"
                    ) from None
                if failures == 1 or failures % 20 == 0:
                    log.info(
                        "status_poll_failed",
                        backend=self.spec.name,
                        remote_id=remote_id,
                        failures=failures,
                        error=str(exc),
                    )
                await asyncio.sleep(self.backoff_s(failures, exc, floor_s=self.spec.poll_interval_s))
                continue
            failures = 0
            if status.gpu_seconds is not None:
                call.gpu_seconds = status.gpu_seconds
            if status.unknown is not None and status.unknown not in unknown:
                # A status added at the provider after this was written: still running.
                unknown.add(status.unknown)
                log.warning(
                    "remote_status_unknown",
                    backend=self.spec.name,
                    remote_id=remote_id,
                    status=status.unknown,
                )
                if call.on_unknown_status is not None:
                    call.on_unknown_status(status.unknown)
            if status.state is State.FAILED:
                raise PermanentBackendError(status.error or "the backend reported a failure", work_over=True)
            if status.state is State.COMPLETED:
                break
            await asyncio.sleep(next_poll_in(self.spec.poll_interval_s))
        return await self.retrying(lambda: self.result(remote_id, status, call.remote_urls))


def next_poll_in(interval_s: float) -> float:
    return interval_s * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)


def seconds_from(value: Any, scale: float = 1.0) -> float | None:
    """A provider's duration field as seconds (None when absent or not a finite number)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value) * scale
    return None


def time_from(value: Any) -> datetime | None:
    """A provider's ISO 8601 time (Replicate's `completed_at`), or None."""
    if not isinstance(value, str):
        return None
    try:
        # Replicate writes up to nine fractional digits; Python reads six.
        head, dot, tail = value.replace("Z", "+00:00").partition(".")
        if dot:
            digits = len(tail) - len(tail.lstrip("0123456789"))
            tail = tail[: min(digits, 6)] + tail[digits:]
        parsed = datetime.fromisoformat(head + dot + tail)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def remote_id_from(body: Any, key: str, what: str) -> str:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise PermanentBackendError(f"{what}: the reply has no {key!r}: {str(body)[:200]}")
    if len(value) > MAX_REMOTE_ID or text_problem(value):
        raise PermanentBackendError(f"{what}: the reply's {key!r} is not an id we can store: {value[:100]!r}")
    return value


def unknown_status(status: Any, gpu_seconds: float | None = None) -> Poll:
    """A status this runner does not know: waited out as still running (runpodctl polls on
    an unrecognised status too, runpod/runpodctl internal/api/invoke.go)."""
    return Poll(State.PENDING, gpu_seconds=gpu_seconds, unknown=str(status)[:100])
