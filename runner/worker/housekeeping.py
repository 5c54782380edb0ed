"""The statements of the worker's housekeeping: what no instance can claim, what is still
running at a provider after a cancel, and retention."""

from __future__ import annotations

import asyncpg

from runner.db.notify import Notifier

RETENTION_LOCK_KEY = 0x72756E6E65720002  # one instance at a time deletes old jobs
WAITING_LOCK_KEY = 0x72756E6E65720003  # one instance at a time notes why jobs wait


async def unclaimable(pool: asyncpg.Pool) -> dict[str, int]:
    """Queued jobs per backend that no live instance has (a job waits for such an instance;
    it does not fail)."""
    rows = await pool.fetch(
        """SELECT b AS backend, count(*) AS jobs FROM jobs j, unnest(j.backends) b
           WHERE j.status = 'queued' AND NOT EXISTS (
               SELECT 1 FROM workers w WHERE w.lease_expires_at >= now() AND b = ANY(w.backends))
           GROUP BY b"""
    )
    return {r["backend"]: r["jobs"] for r in rows}


async def queue(pool: asyncpg.Pool) -> dict[str, tuple[int, float]]:
    """Per backend: queued jobs needing it and the oldest one's age in seconds (one scan of
    the queued jobs, by their partial index)."""
    rows = await pool.fetch(
        """SELECT b AS backend, count(*) AS jobs,
                  extract(epoch FROM now() - min(j.created_at))::float8 AS age
           FROM jobs j, unnest(j.backends) b WHERE j.status = 'queued' GROUP BY b"""
    )
    return {r["backend"]: (r["jobs"], max(r["age"], 0.0)) for r in rows}


async def note_waiting(
    pool: asyncpg.Pool, backends: list[str], notifier: Notifier | None = None
) -> int | None:
    """Say in the audit trail of each queued job that needs one of `backends` (which no live
    instance has) why it waits: a `waiting` event, once per reason, which also reaches the
    wallet's event stream. The number noted; None if another instance is at it."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", WAITING_LOCK_KEY):
            return None
        noted = await conn.fetch(
            """WITH stranded AS (
                   SELECT j.id, runner_waiting_reason(j.backends) AS reason FROM jobs j
                   WHERE j.status = 'queued' AND j.backends && $1::text[]),
               noted AS (
                   INSERT INTO job_events (job_id, kind, actor, detail)
                   SELECT s.id, 'waiting', 'system', jsonb_build_object('reason', s.reason)
                   FROM stranded s
                   WHERE s.reason IS NOT NULL AND NOT EXISTS (
                       SELECT 1 FROM job_events e WHERE e.job_id = s.id AND e.kind = 'waiting'
                       AND e.detail->>'reason' = s.reason)
                   RETURNING job_id)
               SELECT n.job_id, j.owner FROM noted n JOIN jobs j ON j.id = n.job_id""",
            backends,
        )
    if notifier is not None:
        for row in noted:
            notifier.changed(row["job_id"], row["owner"])
    return len(noted)


async def unconfirmed(pool: asyncpg.Pool) -> dict[str, int]:
    """Executions per backend whose work may still run at the provider after a cancel: the
    cancel acknowledged but the work not yet seen over, or the cancel tried and not yet
    accepted (a 401/403 from a rotated key, the provider down): what to alert on."""
    rows = await pool.fetch("""SELECT backend, count(*) AS n FROM executions
                               WHERE (remote_cancel = 'acknowledged' AND remote_cancel_due IS NOT NULL)
                                  OR (remote_cancel = 'pending' AND remote_cancel_tries > 0)
                               GROUP BY backend""")
    return {r["backend"]: r["n"] for r in rows}


async def delete_finished(pool: asyncpg.Pool, *, older_than_days: float, limit: int) -> int | None:
    """Delete up to `limit` finished jobs older than that, with their executions, events and
    idempotency keys, in one short transaction; None if another instance holds the
    retention lock."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RETENTION_LOCK_KEY):
            return None
        await conn.execute("SET LOCAL runner.retention = 'on'")  # the audit trail allows this delete
        deleted: int = await conn.fetchval(
            """WITH old AS (
                   SELECT id FROM jobs WHERE status IN ('completed', 'failed', 'cancelled')
                     AND finished_at < now() - make_interval(days => $1::int, secs => $2)
                   ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED),
               events AS (DELETE FROM job_events WHERE job_id IN (SELECT id FROM old)),
               executions AS (DELETE FROM executions WHERE job_id IN (SELECT id FROM old)),
               keys AS (DELETE FROM idempotency_keys WHERE job_id IN (SELECT id FROM old)),
               gone AS (DELETE FROM jobs WHERE id IN (SELECT id FROM old) RETURNING 1)
               SELECT count(*) FROM gone""",
            int(older_than_days),
            (older_than_days % 1) * 86400,
            limit,
        )
        return deleted
