"""Jobs in Postgres: submit, read, list, audit. They return rows (mappings of the stored
values); the API renders them. Every status write elsewhere is conditional."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from runner.db.notify import Notifier
from runner.errors import (
    IdempotencyConflict,
    JobError,
    JobForbidden,
    JobNotFound,
    NotRerunnable,
    QuotaExceeded,
    RateExceeded,
)
from runner.filters import JobFilter, where
from runner.timeutil import parse_iso

JobRow = Mapping[str, Any]
SUBMIT = "SELECT * FROM runner_submit($1, $2, $3, $4, $5, $6, $7, $8)"
# The wallet's lock, as runner_submit takes it (migration 0003): a superseding submit takes
# it before its cancel, so that no submit with the same key commits between the two.
WALLET_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 42))"

JOB_COLUMNS = """j.id, j.owner, j.status, j.created_at, j.started_at, j.finished_at,
    j.cancelled_at, j.cancelled_by, j.cancel_reason, j.timeout_s, j.metadata, j.error,
    (SELECT sum(e.gpu_seconds) FROM executions e WHERE e.job_id = j.id) AS gpu_seconds, j.rerun_of,
    j.webhook, j.webhook_events, j.concurrency_key, runner_executions_json(j.id) AS executions"""


class Superseder(Protocol):
    """What a superseding submit needs of the canceller (runner.cancel.canceller, which
    imports this module): its cancel, in the submit's transaction, and what follows it."""

    async def supersede(
        self, conn: asyncpg.Connection, owner: str, key: str, new_job: uuid.UUID
    ) -> asyncpg.Record: ...

    async def superseded(self, row: asyncpg.Record, owner: str) -> None: ...


class _NotCreated(Exception):
    """runner_submit created nothing (a repeat, a conflict, the quota): roll back."""

    def __init__(self, row: asyncpg.Record) -> None:
        super().__init__(row["outcome"])
        self.row = row


ANOTHER_WALLET = "this job belongs to another wallet"


def may_act(owner: str, caller: str, admin: str) -> str:
    """The owner check, in SQL over three expressions: a caller may read or change its own
    jobs, an admin any job. Written once: every statement that acts for a caller (these reads,
    the cancels in runner.cancel.statements) filters by it or returns it as `allowed`."""
    return f"({owner} = {caller} OR {admin})"


def _refuse_unless_allowed(row: JobRow) -> None:
    if not row["allowed"]:
        raise JobForbidden(ANOTHER_WALLET)


@dataclass(frozen=True, slots=True)
class NewExecution:
    backend: str
    input: Any
    name: str | None = None


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def _within_rate(pool: asyncpg.Pool, owner: str, per_minute: int) -> None:
    """RateExceeded once the wallet has created `per_minute` jobs in the last minute (with
    retention off, each is kept for good: a wallet must not grow the database unbounded)."""
    row = await pool.fetchrow(
        """SELECT count(*) AS n, extract(epoch FROM min(created_at) + interval '1 minute' - now()) AS wait
           FROM (SELECT created_at FROM jobs WHERE owner = $1 AND created_at > now() - interval '1 minute'
                 ORDER BY created_at DESC LIMIT $2) recent""",
        owner,
        per_minute,
    )
    if row is not None and row["n"] >= per_minute:
        wait = max(float(row["wait"]), 0.1)
        raise RateExceeded(
            f"this wallet has submitted {per_minute} jobs in the last minute "
            f"(RUNNER_MAX_SUBMITS_PER_MINUTE); try again in {wait:.0f} s",
            retry_after_s=round(wait, 1),
        )


async def submit(
    pool: asyncpg.Pool,
    *,
    owner: str,
    executions: list[NewExecution],
    timeout_s: int | None,
    metadata: dict[str, Any],
    max_active: int,
    per_minute: int,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    webhook: str | None = None,
    webhook_events: list[str] | None = None,
    notifier: Notifier | None = None,
    concurrency_key: str | None = None,
    supersede: Superseder | None = None,
) -> tuple[JobRow, bool]:
    """Insert a queued job in one round trip (runner_submit, migration 0003); returns
    (job, created). A repeated idempotency key returns the original job. With `supersede`,
    the wallet's active jobs with the same `concurrency_key` are cancelled in the
    transaction that creates this one (and not at all if it is not created)."""
    await _within_rate(pool, owner, per_minute)
    job_id = uuid.uuid4()
    rows = [
        {"id": str(uuid.uuid4()), "name": e.name, "backend": e.backend, "input": e.input} for e in executions
    ]
    args = (job_id, owner, timeout_s, metadata, rows, idempotency_key, body_hash, max_active)
    superseded = None
    if webhook is None and concurrency_key is None:  # one round trip, as before webhooks
        row = await pool.fetchrow(SUBMIT, *args)
    else:
        try:
            async with pool.acquire() as conn, conn.transaction():
                if supersede is not None:
                    assert concurrency_key is not None
                    await conn.execute(WALLET_LOCK, owner)
                    superseded = await supersede.supersede(conn, owner, concurrency_key, job_id)
                row = await conn.fetchrow(SUBMIT, *args)
                assert row is not None
                if row["outcome"] != "created":
                    raise _NotCreated(row)  # and nothing superseded
                # In the submit's transaction: no worker can start the job (an event) before
                # its webhook is there.
                await conn.execute(
                    "UPDATE jobs SET webhook = $2, webhook_events = $3, concurrency_key = $4 WHERE id = $1",
                    job_id,
                    webhook,
                    webhook_events,
                    concurrency_key,
                )
                if superseded is not None and superseded["ids"]:
                    await conn.execute(
                        """INSERT INTO job_events (job_id, kind, actor, detail)
                           VALUES ($1, 'superseded', $2,
                                   jsonb_build_object('jobs', $3::uuid[], 'concurrency_key', $4::text))""",
                        job_id,
                        owner,
                        superseded["ids"],
                        concurrency_key,
                    )
        except _NotCreated as exc:
            row, superseded = exc.row, None
    assert row is not None
    if row["outcome"] == "conflict":
        raise IdempotencyConflict("this Idempotency-Key was used with a different body in the last 24 h")
    if row["outcome"] == "existing":
        return await _read(pool, row["job"]), False
    if row["outcome"] == "quota":
        raise QuotaExceeded(
            f"this wallet already has {row['active']} active jobs (limit {max_active})", limit=max_active
        )
    if supersede is not None and superseded is not None:
        await supersede.superseded(superseded, owner)
    if notifier is not None:
        notifier.work(e.backend for e in executions)
        notifier.changed(job_id, owner)
    fresh = [
        {
            "id": r["id"],
            "name": r["name"],
            "backend": r["backend"],
            "input": r["input"],
            "status": "queued",
            "remote_id": None,
            "attempts": 0,
            "started_at": None,
            "finished_at": None,
            "output": None,
            "error": None,
            "remote_cancel": None,
            "remote_stopped_at": None,
            "gpu_seconds": None,
        }
        for r in rows
    ]
    return (
        {
            "id": job_id,
            "owner": owner,
            "status": "queued",
            "created_at": row["created"],
            "started_at": None,
            "finished_at": None,
            "cancelled_at": None,
            "cancelled_by": None,
            "cancel_reason": None,
            "timeout_s": timeout_s,
            "metadata": metadata,
            "error": None,
            "gpu_seconds": None,
            "rerun_of": None,
            "webhook": webhook,
            "webhook_events": webhook_events if webhook is not None else None,
            "concurrency_key": concurrency_key,
            "executions": fresh,
        },
        True,
    )


async def rerun(
    pool: asyncpg.Pool,
    job_id: uuid.UUID,
    *,
    caller: str,
    admin: bool,
    executions: list[uuid.UUID] | None,
    max_active: int,
    per_minute: int,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    notifier: Notifier | None = None,
) -> tuple[JobRow, bool]:
    """A new job re-running a cancelled or failed one (runner_rerun, migration 0009): the
    completed executions not named are kept, the rest run again. Returns (job, created)."""
    await _within_rate(pool, caller, per_minute)
    # The new job is read in the statement's own transaction: as created, before any worker
    # (woken by its commit) has claimed it.
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM runner_rerun($1, $2, $3, $4, $5, $6, $7, $8)",
            job_id,
            uuid.uuid4(),
            caller,
            admin,
            executions,
            idempotency_key,
            body_hash,
            max_active,
        )
        assert row is not None
        job = await _read(conn, row["job"]) if row["outcome"] in ("created", "existing") else None
    outcome = row["outcome"]
    if outcome == "not_found":
        raise JobNotFound(f"no job {job_id}")
    if outcome == "forbidden":
        raise JobForbidden(ANOTHER_WALLET)
    if outcome == "not_rerunnable":
        raise NotRerunnable(
            f"the job is {row['detail']}; only cancelled or failed ones can be re-run", status=row["detail"]
        )
    if outcome == "unknown_execution":
        raise JobError(f"$.executions: {row['detail']} is not an execution of job {job_id}")
    if outcome == "conflict":
        raise IdempotencyConflict("this Idempotency-Key was used with a different body in the last 24 h")
    if outcome == "quota":
        raise QuotaExceeded(
            f"this wallet already has {row['detail']} active jobs (limit {max_active})", limit=max_active
        )
    assert job is not None
    if outcome == "created" and notifier is not None:
        notifier.work(e["backend"] for e in job["executions"])  # a claim needs all of them
        notifier.changed(job["id"], job["owner"])
    return job, outcome == "created"


async def _read(conn: asyncpg.Connection | asyncpg.Pool, job_id: uuid.UUID) -> JobRow:
    row: JobRow | None = await conn.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = $1", job_id)
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    return row


async def get_job(pool: asyncpg.Pool, job_id: uuid.UUID, *, caller: str, admin: bool) -> JobRow:
    job: JobRow | None = await pool.fetchrow(
        f"SELECT {JOB_COLUMNS}, {may_act('j.owner', '$2', '$3')} AS allowed FROM jobs j WHERE j.id = $1",
        job_id,
        caller,
        admin,
    )
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    _refuse_unless_allowed(job)
    return job


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|")
        return parse_iso(stamp, assume_utc=False), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise JobError("the cursor is not one this service issued") from None


async def list_jobs(
    pool: asyncpg.Pool,
    *,
    owner: str,
    job_filter: JobFilter,
    limit: int,
    cursor: str | None,
    max_bytes: int,
) -> tuple[list[JobRow], str | None]:
    """The wallet's jobs, newest first: at most `limit`, and no more once their inputs,
    outputs and metadata pass `max_bytes` of JSON (the first job always comes, however big).
    Keyset pagination: new jobs never shift a page. Sizes are measured in Postgres, so that a
    page's rows are the only ones this process ever holds. Only jobs `job_filter` matches."""
    after = decode_cursor(cursor) if cursor else None
    args: list[Any] = [
        owner,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
        limit,
        max_bytes,
    ]
    matches = where(job_filter, args)
    rows = await pool.fetch(
        f"""WITH candidates AS (
                SELECT j.id, j.created_at, octet_length(j.metadata::text) + coalesce((
                    SELECT sum(octet_length(e.input::text) + coalesce(octet_length(e.output::text), 0))
                    FROM executions e WHERE e.job_id = j.id), 0) AS size
                FROM jobs j
                WHERE j.owner = $1 AND {matches}
                  AND ($2::timestamptz IS NULL OR (j.created_at, j.id) < ($2, $3::uuid))
                ORDER BY j.created_at DESC, j.id DESC LIMIT $4),
            sized AS (
                SELECT id, row_number() OVER w AS n, sum(size) OVER w AS upto, count(*) OVER () AS found
                FROM candidates WINDOW w AS (ORDER BY created_at DESC, id DESC))
            SELECT {JOB_COLUMNS}, s.found FROM sized s JOIN jobs j ON j.id = s.id
            WHERE s.n <= $5 AND (s.n = 1 OR s.upto <= $6)
            ORDER BY j.created_at DESC, j.id DESC""",
        *args,
    )
    more = bool(rows) and rows[0]["found"] > len(rows)
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return rows, next_cursor


async def audit(pool: asyncpg.Pool, job_id: uuid.UUID, *, caller: str, admin: bool) -> list[JobRow]:
    rows = await pool.fetch(
        f"""SELECT {may_act("j.owner", "$2", "$3")} AS allowed,
                  e.at, e.kind, e.actor, e.detail, e.execution_id
           FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id
           WHERE j.id = $1 ORDER BY e.id""",
        job_id,
        caller,
        admin,
    )
    if not rows:
        raise JobNotFound(f"no job {job_id}")
    _refuse_unless_allowed(rows[0])
    return [r for r in rows if r["kind"] is not None]


async def usage(pool: asyncpg.Pool, *, owner: str, since: datetime, until: datetime) -> dict[str, Any]:
    """A wallet's spend over its jobs created in [since, until): counts and GPU-seconds per
    backend, and the GPU-seconds spent between a cancel's commit and the work seen over."""
    rows = await pool.fetch(
        """SELECT e.backend, count(*) AS executions,
                  count(*) FILTER (WHERE e.status = 'cancelled') AS cancelled,
                  coalesce(sum(e.gpu_seconds), 0) AS gpu_seconds,
                  coalesce(sum(greatest(extract(epoch FROM e.remote_stopped_at - e.finished_at), 0))
                           FILTER (WHERE e.status = 'cancelled'), 0) AS after_cancel,
                  count(DISTINCT j.id) AS jobs
           FROM jobs j JOIN executions e ON e.job_id = j.id
           WHERE j.owner = $1 AND j.created_at >= $2 AND j.created_at < $3
           GROUP BY ROLLUP (e.backend)""",
        owner,
        since,
        until,
    )
    total = next((r for r in rows if r["backend"] is None), None)
    return {
        "jobs": total["jobs"] if total else 0,
        "executions": total["executions"] if total else 0,
        "gpu_seconds": round(float(total["gpu_seconds"]), 3) if total else 0.0,
        "backends": {
            r["backend"]: {
                "executions": r["executions"],
                "cancelled": r["cancelled"],
                "gpu_seconds": round(float(r["gpu_seconds"]), 3),
                "gpu_seconds_after_cancel": round(float(r["after_cancel"]), 3),
            }
            for r in rows
            if r["backend"] is not None
        },
    }


async def event_bounds(pool: asyncpg.Pool) -> tuple[int, int]:
    """The oldest and newest audit event ids (0, 0 when there are none)."""
    row = await pool.fetchrow(
        "SELECT coalesce(min(id), 0) AS low, coalesce(max(id), 0) AS high FROM job_events"
    )
    assert row is not None
    return row["low"], row["high"]


async def changed_since(pool: asyncpg.Pool, *, owner: str, after: int, limit: int) -> list[JobRow]:
    """The wallet's jobs with an audit event after `after`, each once with its newest event
    id (`last_event`), oldest change first."""
    rows: list[JobRow] = await pool.fetch(
        f"""SELECT {JOB_COLUMNS}, c.last AS last_event FROM (
                SELECT e.job_id, max(e.id) AS last FROM job_events e JOIN jobs o ON o.id = e.job_id
                WHERE e.id > $2 AND o.owner = $1 GROUP BY e.job_id ORDER BY last LIMIT $3) c
            JOIN jobs j ON j.id = c.job_id ORDER BY c.last""",
        owner,
        after,
        limit,
    )
    return rows
