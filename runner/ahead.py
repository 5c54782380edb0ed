"""Cancel-ahead signals between instances: a task held by another instance is signalled
before the cancel has committed.

A cancel's NOTIFY is delivered at its commit, after the WAL flush; on a slow disk that flush
is most of the cross-instance latency (measured on the development VM: a one-row UPDATE
commits in 0.7 ms p50 but 8-10 ms p99, while a transaction that only notifies, having no WAL
to flush, takes 0.5 ms p99). So the instance taking a cancel for a job it does not hold also
sends, beside the cancel statement, a notify-only signal naming the job and the requester.
The instance holding the job checks the requester against the job's wallet (known from its
claimed row) and signals the task at once.

The signal is a hint; the row is the truth. What depends on the commit (remote cancels, the
stop record) waits for the cancel's own NOTIFY for that job, or, failing that within
CONFIRM_S, reads the row: cancelled, or finished first; still running means the cancel is
not on record, and the holder records it itself (runner.worker).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import structlog

from runner.context import JobContextManager, PendingCancel, StopReason
from runner.errors import CancelNotRecorded

log = structlog.get_logger("runner.ahead")

CANCEL_AHEAD = "runner_cancel_ahead"  # JSON: {"job", "actor", "admin", "reason", "from"}
CONFIRM_S = 1.0  # how long a signalled holder waits for the commit's NOTIFY before reading the row


class AheadSignals:
    def __init__(self, pool: asyncpg.Pool, manager: JobContextManager, instance_id: str) -> None:
        self.pool = pool
        self.manager = manager
        self.instance_id = instance_id
        self._awaiting: dict[uuid.UUID, tuple[asyncio.Future[bool], asyncio.TimerHandle]] = {}
        self._reads: set[asyncio.Task[None]] = set()

    async def send(self, job_id: uuid.UUID, *, actor: str, admin: bool, reason: str | None) -> None:
        """Best effort: should it fail, the holder hears the cancel at its commit instead."""
        payload = json.dumps({"job": str(job_id), "actor": actor, "admin": admin, "reason": reason,
                              "from": self.instance_id})
        try:
            await self.pool.execute("SELECT pg_notify($1, $2)", CANCEL_AHEAD, payload)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("cancel_ahead_signal_failed", job_id=str(job_id), error=repr(exc))

    def on_signal(self, payload: str) -> None:
        """Another instance is cancelling a job: stop it now if we hold it for that wallet."""
        try:
            message = json.loads(payload)
            job_id = uuid.UUID(message["job"])
            actor, admin, reason = message["actor"], message["admin"], message["reason"]
            if not (isinstance(actor, str) and isinstance(admin, bool)
                    and (reason is None or isinstance(reason, str))):
                raise ValueError("bad field types")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bad_cancel_ahead_signal", payload=payload[:200], error=repr(exc))
            return
        if message.get("from") == self.instance_id:
            return  # the sender signals its own tasks directly
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[bool] = loop.create_future()
        if self.manager.cancel_ahead(job_id, StopReason.CANCELLED,
                                     PendingCancel(actor, admin, reason, outcome)):
            self._awaiting[job_id] = (outcome, loop.call_later(CONFIRM_S, self._read_row, job_id))
            log.info("job_cancelled_ahead", job_id=str(job_id), by=actor)

    def on_committed(self, job_id: uuid.UUID) -> None:
        """The cancel's own NOTIFY: Postgres has the job cancelled."""
        entry = self._awaiting.pop(job_id, None)
        if entry is not None:
            outcome, timer = entry
            timer.cancel()
            if not outcome.done():
                outcome.set_result(True)

    def _read_row(self, job_id: uuid.UUID) -> None:
        task = asyncio.get_running_loop().create_task(self._settle_from_row(job_id),
                                                      name=f"cancel-ahead-check-{job_id}")
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _settle_from_row(self, job_id: uuid.UUID) -> None:
        """No NOTIFY came (lost, or nothing committed): the row says what happened."""
        entry = self._awaiting.pop(job_id, None)
        if entry is None:
            return
        outcome = entry[0]
        try:
            status = await self.pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            status = f"unknown ({exc!r})"
        if outcome.done():
            return
        if status == "cancelled":
            outcome.set_result(True)
        elif status in ("completed", "failed"):
            outcome.set_result(False)
        else:
            outcome.set_exception(CancelNotRecorded(
                f"signalled {CONFIRM_S} s ago, and the job is still {status}"))

    async def close(self) -> None:
        """On shutdown: what still waits is settled from the row now."""
        for job_id, (_, timer) in list(self._awaiting.items()):
            timer.cancel()
            self._read_row(job_id)
        await asyncio.gather(*self._reads, return_exceptions=True)
