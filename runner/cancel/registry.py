"""JobContextManager: the thread-safe map from job id to the asyncio.Task running it.

`cancel` may be called from any thread: it reaches the task through the task's own loop.
Each task is cancelled at most once, so its cleanup (remote cancels under a shield) is not
cut short by a second notification of the same cancel.

A cancel made on the instance that holds the job signals the task as soon as its statement
has been sent (`cancel_ahead`): the task's HTTP calls close while Postgres commits. What
depends on the commit -- the remote cancel, the stop record -- waits for the statement
(`PendingCancel`), and does not happen if the job had finished first.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from uuid import UUID


class StopReason(StrEnum):
    CANCELLED = "cancelled"  # a user (or admin) cancelled it
    TIMEOUT = "timeout"  # timeout_s ran out: a cancel by "system"
    SHUTDOWN = "shutdown"  # this instance is stopping: requeue, never a cancel
    LEASE_LOST = "lease_lost"  # another instance requeued it: stop, write nothing

    @property
    def is_cancel(self) -> bool:
        """True when the job is cancelled for good, so the backend must be told to stop."""
        return self in (StopReason.CANCELLED, StopReason.TIMEOUT)


@dataclass(frozen=True)
class PendingCancel:
    """A cancel whose statement was under way when the task was signalled."""

    actor: str
    admin: bool
    reason: str | None
    statement: asyncio.Future[Any]  # resolves to the cancel statement's row


@dataclass
class JobContext:
    """What a running job is, as the cancel path sees it: its task and its executions' tasks,
    why it is stopping, and its stop's record (the stops batcher writes it). The worker's
    parts keep their own state (runner.worker)."""

    job_id: UUID
    task: asyncio.Task[Any]
    loop: asyncio.AbstractEventLoop
    executions: dict[UUID, asyncio.Task[Any]] = field(default_factory=dict)
    execution_reasons: dict[UUID, StopReason] = field(default_factory=dict)
    spent: dict[UUID, float] = field(default_factory=dict)  # GPU-seconds of executions cut short
    reason: StopReason | None = None
    cancel_requested_at: float | None = None  # time.perf_counter() of the first cancel
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    stop_write: asyncio.Future[None] | None = None  # the stop's audit row, once handed over
    stop_awaited: bool = False  # someone waits for that row: it is written without lingering
    # The thread running `loop` when it was registered there: a cancel from that thread
    # calls the task directly (asking asyncio for the running loop costs a getpid() call).
    loop_thread: int | None = None
    owner: str | None = None  # the wallet that submitted the job
    pending_cancel: PendingCancel | None = None  # set by cancel_ahead

    def _request(self, reason: StopReason) -> bool:
        """Record why; True when the task must be cancelled now (first request only).

        A real cancel overrides a shutdown or lost lease that came first: the task is then
        already stopping, and its cleanup reads `reason` when it gets there.
        """
        first = self.reason is None
        if first or (reason.is_cancel and not self.reason.is_cancel):  # type: ignore[union-attr]
            self.reason = reason
        if first:
            self.cancel_requested_at = time.perf_counter()
        return first


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


# A cancel can be heard (NOTIFY, on the listener's socket) before the claim that started
# the job has been read (on a pool socket): such cancels are remembered this long.
EARLY_CANCEL_TTL_S = 60.0
EARLY_CANCEL_MAX = 100_000


class JobContextManager:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[UUID, JobContext] = {}
        self._early: dict[tuple[UUID, UUID | None], tuple[StopReason, float]] = {}

    def register(
        self,
        job_id: UUID,
        task: asyncio.Task[Any],
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        owner: str | None = None,
    ) -> JobContext:
        ctx = JobContext(job_id, task, loop or task.get_loop(), owner=owner)
        if _on_loop(ctx.loop):
            ctx.loop_thread = threading.get_ident()
        with self._lock:
            if job_id in self._jobs:
                raise RuntimeError(f"job {job_id} is already registered")
            self._jobs[job_id] = ctx
            early = self._early.pop((job_id, None), None) if self._early else None
            if self._early:
                for key in [k for k in self._early if k[0] == job_id]:
                    ctx.execution_reasons[key[1]] = self._early.pop(key)[0]  # type: ignore[index]
        if early is not None:
            self.cancel(job_id, early[0])
        return ctx

    def _remember(self, job_id: UUID, execution_id: UUID | None, reason: StopReason) -> None:
        """Called with the lock held, for a cancel of a job this instance does not hold (yet)."""
        if not reason.is_cancel:
            return
        now = time.monotonic()
        if len(self._early) >= EARLY_CANCEL_MAX:
            self._early = {k: v for k, v in self._early.items() if now - v[1] < EARLY_CANCEL_TTL_S}
            if len(self._early) >= EARLY_CANCEL_MAX:
                self._early.clear()
        self._early[(job_id, execution_id)] = (reason, now)

    def unregister(self, job_id: UUID) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def get(self, job_id: UUID) -> JobContext | None:
        with self._lock:
            return self._jobs.get(job_id)

    def is_running(self, job_id: UUID) -> bool:
        with self._lock:
            return job_id in self._jobs

    def count(self) -> int:
        with self._lock:
            return len(self._jobs)

    def job_ids(self) -> list[UUID]:
        with self._lock:
            return list(self._jobs)

    def cancel(self, job_id: UUID, reason: StopReason = StopReason.CANCELLED) -> bool:
        """Cancel the job's task if this instance holds it; True if it does."""
        with self._lock:
            ctx = self._jobs.get(job_id)
            if ctx is None:
                self._remember(job_id, None, reason)
                return False
            first = ctx._request(reason)
        if first:
            self._call(ctx, ctx.task.cancel, reason.value)
        return True

    def cancel_ahead(self, job_id: UUID, reason: StopReason, pending: PendingCancel) -> bool:
        """Signal the job's task before the cancel has committed, if this instance holds it,
        on the calling thread's loop, and the caller may cancel it (the owner, or an admin);
        True if it did. The task's cleanup waits for `pending.statement` where it must."""
        with self._lock:
            ctx = self._jobs.get(job_id)
            if (
                ctx is None
                or ctx.loop_thread != threading.get_ident()
                or not (pending.admin or ctx.owner == pending.actor)
            ):
                return False
            first = ctx._request(reason)
            if first:
                ctx.pending_cancel = pending
        if first:
            ctx.task.cancel(reason.value)
        return first

    def held_here_by(self, owner: str) -> list[UUID]:
        """The jobs of `owner` whose tasks run on the calling thread's loop."""
        here = threading.get_ident()
        with self._lock:
            return [
                ctx.job_id for ctx in self._jobs.values() if ctx.owner == owner and ctx.loop_thread == here
            ]

    def cancel_execution(
        self, job_id: UUID, execution_id: UUID, reason: StopReason = StopReason.CANCELLED
    ) -> bool:
        """Cancel one execution's task; the job's task goes on with the others."""
        with self._lock:
            ctx = self._jobs.get(job_id)
            if ctx is None:
                self._remember(job_id, execution_id, reason)
                return False
            if execution_id in ctx.execution_reasons:
                return True
            # Recorded even before the execution's task exists: the job task skips it then.
            ctx.execution_reasons[execution_id] = reason
            task = ctx.executions.get(execution_id)
            if task is None:
                return True
        self._call(ctx, task.cancel, reason.value)
        return True

    def cancel_all(self, reason: StopReason) -> int:
        with self._lock:
            ids = list(self._jobs)
        return sum(self.cancel(job_id, reason) for job_id in ids)

    @staticmethod
    def _call(ctx: JobContext, fn: Any, *args: Any) -> None:
        if ctx.loop_thread == threading.get_ident():
            fn(*args)  # the fast path: no hop through the loop's queue
        else:
            ctx.loop.call_soon_threadsafe(fn, *args)
