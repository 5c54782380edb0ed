"""What a job's task, and each of its executions' tasks, does when it is cancelled: an
execution tells its backend to stop when it must (remote.RemoteCanceller.send, shielded); the
job's task hands its stop record to the stops batcher (stops.StopRecorder) -- or, stopping for
a shutdown, goes back to the queue; for a lost lease it writes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from runner.backends import Backend, ExecutionCall
from runner.cancel.registry import JobContext, StopReason
from runner.cancel.remote import RemoteCanceller
from runner.cancel.stops import Spawn, StopRecorder


class TaskStopping:
    def __init__(self, remote: RemoteCanceller, stops: StopRecorder, spawn: Spawn) -> None:
        self.remote = remote
        self.stops = stops
        # The supervisor's short tasks: what must run to its end even if the task waiting on
        # it is cancelled again (a shutdown) runs there, owned and awaited when the worker drains.
        self._spawn = spawn

    async def execution_cancelled(
        self,
        ctx: JobContext,
        execution_id: uuid.UUID,
        backend_name: str,
        backend: Backend,
        call: ExecutionCall,
        spent_s: float,
        xlog: Any,
    ) -> None:
        """An execution's call was cancelled (its caller re-raises the CancelledError)."""
        if not backend.spec.confirms_stop:  # the work ended with its call: its spend is known
            ctx.spent[execution_id] = spent_s
        if not await self._backend_must_be_told(ctx, execution_id, backend, call):
            return
        send = self._spawn(
            self.remote.send(ctx.job_id, execution_id, backend_name, call.remote_id, call.remote_urls),
            f"remote-cancel-{execution_id}",
        )
        # Logged when it ends, whether or not this task is still there to see it.
        send.add_done_callback(lambda task: _log_failed_send(task, xlog))
        with contextlib.suppress(Exception):
            # The cancel stays owed ("pending"): the sweeper sends it. Whatever went wrong
            # there must not replace the CancelledError.
            await asyncio.shield(send)

    async def _backend_must_be_told(
        self, ctx: JobContext, execution_id: uuid.UUID, backend: Backend, call: ExecutionCall
    ) -> bool:
        """Whether an execution's task, stopping, tells the backend to stop: for a cancel that
        landed (or whose statement failed: the caller meant it), when a cancel can reach the
        work; for a shutdown, an http call with a cancel_url -- it has no remote id to resume
        by, so it is sent again when the job is resumed."""
        own_reason = ctx.execution_reasons.get(execution_id)
        reason = own_reason or ctx.reason
        if reason is StopReason.SHUTDOWN:
            return call.remote_id is None and backend.spec.cancels_without_remote_id
        if reason is None or not reason.is_cancel or not backend.spec.can_cancel(call.remote_id):
            return False
        return (
            own_reason is not None
            or ctx.pending_cancel is None
            or await self.stops.cancel_landed(ctx.pending_cancel) is not False
        )

    def found_cancelled(self, ctx: JobContext) -> None:
        """Its final write found the job cancelled (it was, just as it finished): the task
        stopped for that cancel all the same, and its stop is recorded when it ends."""
        ctx.reason = ctx.reason or StopReason.CANCELLED

    def task_ended(self, ctx: JobContext) -> None:
        """The job's task has ended, however: "stopped" is reported once its stop is on record."""
        self.stops.on_task_done(ctx)

    async def job_cancelled(
        self, ctx: JobContext, requeue: Callable[[], Coroutine[Any, Any, None]], jlog: Any
    ) -> None:
        """The job's task was cancelled, its executions have cleaned up (the caller re-raises
        the CancelledError): a shutdown requeues the job (`requeue`, shielded); a lost lease
        writes nothing; a cancel hands its stop record over -- no await here, so thousands of
        cancelled tasks end at once (the batcher owns the write, and the drain awaits it)."""
        reason = ctx.reason or StopReason.SHUTDOWN
        if reason is StopReason.SHUTDOWN:
            await asyncio.shield(self._spawn(requeue(), f"requeue-{ctx.job_id}"))
        elif reason is StopReason.LEASE_LOST:
            jlog.warning("job_lease_lost")
        else:
            self.stops.record(ctx, reason)


def _log_failed_send(task: asyncio.Task[Any], xlog: Any) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        xlog.error("remote_cancel_failed", exc_info=error)
