"""The worker's statements: claim, results, leases, requeues. Each status write names the
statuses it may leave, so Postgres decides every race."""

from __future__ import annotations

import uuid

import asyncpg

from runner import jsontext
from runner.cancel.statements import finish_job_set, owe_remote_cancel
from runner.db.notify import Notifier
from runner.storable import readable
from runner.worker.records import Capacity, ClaimedExecution, ClaimedJob, ExecutionResult

# A worker's lease: one row, renewed by its heartbeat ($2 worker, $3 lease seconds). A
# running job's lease is its worker's.
# $4: the backends this worker has, so that a job nobody can run is seen as such.
_HEARTBEAT = """INSERT INTO workers (id, lease_expires_at, backends)
    VALUES ($2, now() + make_interval(secs => $3), $4::text[])
    ON CONFLICT (id) DO UPDATE
    SET lease_expires_at = EXCLUDED.lease_expires_at, backends = EXCLUDED.backends"""


async def claim(
    pool: asyncpg.Pool,
    *,
    worker_id: str,
    limit: int,
    lease_s: float,
    capacity: Capacity,
    notifier: Notifier | None = None,
) -> list[ClaimedJob]:
    """Claim up to `limit` queued jobs and mark their open executions running.

    Only jobs whose every backend this worker has (claim by capability). In turn over the
    wallets with queued jobs -- the one served least recently first -- each wallet's oldest
    first (fair share: one wallet's backlog does not hold back another's first job). A job
    that needs a limited backend is claimed only while that backend has a free slot, and its
    executions there stay queued until they take one (runner_take_slot): a claim does not
    hoard them.
    """
    limited = sorted(capacity.limits)
    rows = await pool.fetch(
        f"""WITH lease AS ({_HEARTBEAT}),
           candidates AS (
               SELECT c.*, w.last_claimed_at AS served
               FROM (SELECT DISTINCT owner FROM jobs WHERE status = 'queued') o
               LEFT JOIN wallet_turns w ON w.owner = o.owner,
               LATERAL (SELECT id, owner, created_at,
                               (SELECT b FROM unnest(backends) b WHERE b = ANY($5::text[]) LIMIT 1) AS limited
                        FROM jobs WHERE owner = o.owner AND status = 'queued' AND backends <@ $4::text[]
                        ORDER BY created_at, id LIMIT $1) c),
           slots AS (
               SELECT s.name, s.total - (SELECT count(*) FROM executions e
                                         WHERE e.backend = s.name AND e.status = 'running') AS free
               FROM unnest($5::text[], $6::int[]) AS s(name, total)),
           -- Each wallet's first job, then each wallet's second, ...; within a turn, the
           -- wallet served least recently first.
           ordered AS (
               SELECT id, limited, turn, served, created_at,
                      row_number() OVER (PARTITION BY limited
                                         ORDER BY turn, served NULLS FIRST, created_at, id) AS nth
               FROM (SELECT id, limited, served, created_at,
                            row_number() OVER (PARTITION BY owner ORDER BY created_at, id) AS turn
                     FROM candidates) r),
           chosen AS (
               SELECT o.id FROM ordered o LEFT JOIN slots s ON s.name = o.limited
               WHERE o.limited IS NULL OR o.nth <= s.free
               ORDER BY o.turn, o.served NULLS FIRST, o.created_at, o.id LIMIT $1),
           picked AS (
               SELECT j.id FROM jobs j JOIN chosen USING (id)
               WHERE j.status = 'queued' FOR UPDATE OF j SKIP LOCKED),
           job AS (
               UPDATE jobs j SET status = 'running', worker_id = $2, attempts = j.attempts + 1,
                   started_at = coalesce(j.started_at, now())
               FROM picked WHERE j.id = picked.id
               RETURNING j.id, j.owner, j.timeout_s, j.started_at, j.attempts),
           ex AS (
               UPDATE executions e SET status = 'running', started_at = coalesce(e.started_at, now())
               FROM job WHERE e.job_id = job.id AND e.status IN ('queued', 'running')
                 AND NOT e.backend = ANY($5::text[])
               RETURNING e.id, e.job_id, e.position, e.backend, e.input, e.remote_id, e.attempts,
                   e.remote_urls),
           waiting AS (
               SELECT e.id, e.job_id, e.position, e.backend, e.input, e.remote_id, e.attempts, e.remote_urls
               FROM executions e JOIN job ON e.job_id = job.id
               WHERE e.status IN ('queued', 'running') AND e.backend = ANY($5::text[])),
           open AS (SELECT * FROM ex UNION ALL SELECT * FROM waiting),
           ev AS (
               INSERT INTO job_events (job_id, kind, actor, detail)
               SELECT id, 'started', 'system', jsonb_build_object('worker', $2, 'attempt', attempts)
               FROM job),
           turns AS (
               INSERT INTO wallet_turns (owner, last_claimed_at) SELECT DISTINCT owner, now() FROM job
               ON CONFLICT (owner) DO UPDATE SET last_claimed_at = EXCLUDED.last_claimed_at)
           SELECT job.*, coalesce(json_agg(open ORDER BY open.position)
               FILTER (WHERE open.id IS NOT NULL), '[]')::text AS executions
           FROM job LEFT JOIN open ON open.job_id = job.id
           GROUP BY job.id, job.owner, job.timeout_s, job.started_at, job.attempts""",
        limit,
        worker_id,
        lease_s,
        capacity.backends,
        limited,
        [capacity.limits[b] for b in limited],
    )
    if notifier is not None:
        for r in rows:
            notifier.changed(r["id"], r["owner"])
    # The executions come as text -- each open one's row as it stands (json_agg of the row,
    # the worker's own input, not a rendering: the API's is runner_executions_json) -- decoded here
    # one job at a time (big ones beside the loop): a claim of many big inputs decoded in one
    # go held the loop for 100s of ms.
    return [
        ClaimedJob(
            id=r["id"],
            owner=r["owner"],
            timeout_s=r["timeout_s"],
            started_at=r["started_at"],
            attempts=r["attempts"],
            executions=[
                ClaimedExecution(
                    uuid.UUID(e["id"]),
                    e["backend"],
                    e["input"],
                    e["remote_id"],
                    e["attempts"],
                    e["remote_urls"],
                )
                for e in await jsontext.loads_async(r["executions"])
            ],
        )
        for r in rows
    ]


async def set_remote_id(
    pool: asyncpg.Pool,
    execution_id: uuid.UUID,
    remote_id: str,
    attempts: int,
    *,
    cancel_grace_s: float,
    urls: dict[str, str] | None = None,
    notifier: Notifier | None = None,
) -> str:
    """Store the remote id (and the URLs the provider returned for the work) at once. If the
    execution was cancelled meanwhile, a cancel is owed."""
    owed = "status = 'cancelled' AND remote_cancel IS NULL"
    row = await pool.fetchrow(
        f"""UPDATE executions SET remote_id = $2, attempts = $3, remote_urls = $5::jsonb,
               {owe_remote_cancel(owed, "now() + make_interval(secs => $4)")}
           WHERE id = $1 RETURNING status, job_id, (SELECT owner FROM jobs WHERE id = job_id)""",
        execution_id,
        remote_id,
        attempts,
        cancel_grace_s,
        urls,
    )
    if row is None:
        return "missing"
    if notifier is not None:
        notifier.changed(row["job_id"], row["owner"])
    status: str = row["status"]
    return status


async def write_results(
    pool: asyncpg.Pool, results: list[ExecutionResult], worker_id: str, notifier: Notifier | None = None
) -> list[tuple[bool, str | None]]:
    """Record execution results, each unless it is no longer running (a cancel won the race),
    and finish the jobs whose last open execution this was -- what `finalize` would do next,
    in the same statement and commit. One statement for the whole batch.

    For each result: (written, the job's final status if this batch finished the job). A job
    it could not finish (its executions completing in two batches at once, each seeing the
    other still running) is finished by `finalize`, which its task calls then."""
    rows = await pool.fetch(
        f"""WITH r AS (
               SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(
                   id uuid, status text, output jsonb, error text, attempts int, owe boolean,
                   gpu double precision)),
           -- Lock order as everywhere: jobs before executions, ids ascending. (The count
           -- below makes Postgres take every job lock before the first execution lock.)
           locked_jobs AS (
               SELECT id FROM jobs WHERE id = ANY($3::uuid[]) AND status = 'running' AND worker_id = $2
               ORDER BY id FOR NO KEY UPDATE),
           locked AS (
               SELECT e.id FROM executions e JOIN r ON r.id = e.id
               WHERE e.status = 'running' AND (SELECT count(*) FROM locked_jobs) >= 0
               ORDER BY e.id FOR NO KEY UPDATE OF e),
           ex AS (
               UPDATE executions e SET status = r.status, output = r.output, error = r.error,
                   attempts = r.attempts, finished_at = now(), gpu_seconds = r.gpu,
                   {owe_remote_cancel("r.owe")}
               FROM r JOIN locked ON locked.id = r.id WHERE e.id = r.id AND e.status = 'running'
               RETURNING e.id, e.job_id, e.status, e.error, e.attempts),
           -- Each execution of these jobs as it is now: the rows just written win over this
           -- statement's snapshot, which does not show them.
           latest AS MATERIALIZED (
               SELECT DISTINCT ON (id) id, job_id, status, written FROM (
                   SELECT id, job_id, status, true AS written FROM ex
                   UNION ALL
                   SELECT id, job_id, status, false FROM executions WHERE job_id = ANY($3::uuid[])) s
               ORDER BY id, written DESC),
           -- Finished: every execution terminal, one of them written here (so completed or
           -- failed: such a job is not "all cancelled").
           job AS (
               UPDATE jobs j SET {finish_job_set("d.final", "NULL", "NULL")}
               FROM (SELECT job_id, runner_final_status(array_agg(status)) AS final FROM latest
                     GROUP BY job_id HAVING bool_or(written)) d
               WHERE j.id = d.job_id AND d.final IS NOT NULL AND j.status = 'running' AND j.worker_id = $2
               RETURNING j.id, j.status),
           -- One INSERT, executions first: the trail reads in the order things happened.
           ev AS (
               INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
               SELECT job_id, id, 'execution_' || status, 'system',
                   jsonb_strip_nulls(jsonb_build_object('attempts', attempts, 'error', error))
               FROM ex
               UNION ALL
               SELECT id, NULL, status, 'system', '{{}}'::jsonb FROM job),
           changed AS (SELECT DISTINCT job_id FROM ex)
           SELECT 'execution' AS kind, id, NULL AS status FROM ex
           UNION ALL SELECT 'job', id, status FROM job
           UNION ALL SELECT 'changed', c.job_id, j.owner FROM changed c JOIN jobs j ON j.id = c.job_id""",
        [
            {
                "id": str(r.execution_id),
                "status": r.status,
                "output": r.output,
                "error": None if r.error is None else readable(r.error),
                "attempts": r.attempts,
                "owe": r.owe_remote_cancel,
                "gpu": r.gpu_seconds,
            }
            for r in results
        ],
        worker_id,
        list({r.job_id for r in results}),
    )
    if notifier is not None:
        for row in rows:
            if row["kind"] == "changed":
                notifier.changed(row["id"], row["status"])  # the owner, in that column
    written = {row["id"] for row in rows if row["kind"] == "execution"}
    finished = {row["id"]: row["status"] for row in rows if row["kind"] == "job"}
    return [
        (r.execution_id in written, finished.get(r.job_id) if r.execution_id in written else None)
        for r in results
    ]


# Finished from its executions: all cancelled (by cancels of each), by the last canceller.
_FINISH_BY_EXECUTIONS = finish_job_set(
    "agg.final", "coalesce(last_cancel.actor, 'system')", "'every execution was cancelled'"
)


async def finalize(
    pool: asyncpg.Pool, job_ids: list[uuid.UUID], worker_id: str, notifier: Notifier | None = None
) -> list[tuple[bool, str]]:
    """Give running jobs their final status from their executions, in one statement.

    For each job: (written, status) -- the status written, or the row's status when it was not
    ours to finish (cancelled meanwhile, requeued elsewhere, or an execution still open).
    """
    rows = await pool.fetch(
        f"""WITH agg AS (
                SELECT job_id, runner_final_status(array_agg(status)) AS final
                FROM executions WHERE job_id = ANY($1) GROUP BY job_id),
            last_cancel AS (
                SELECT DISTINCT ON (job_id) job_id, actor FROM job_events
                WHERE job_id = ANY($1) AND kind = 'execution_cancelled' ORDER BY job_id, id DESC),
            locked AS (
                SELECT id FROM jobs WHERE id = ANY($1) AND status = 'running' AND worker_id = $2
                ORDER BY id FOR NO KEY UPDATE),
            job AS (
                UPDATE jobs j SET {_FINISH_BY_EXECUTIONS}
                FROM locked JOIN agg ON agg.job_id = locked.id
                    LEFT JOIN last_cancel ON last_cancel.job_id = agg.job_id
                WHERE j.id = locked.id AND j.status = 'running' AND j.worker_id = $2
                  AND agg.final IS NOT NULL
                RETURNING j.id, j.status, j.owner),
            ev AS (
                INSERT INTO job_events (job_id, kind, actor, detail)
                SELECT id, status, 'system', '{{}}'::jsonb FROM job)
            SELECT job.id, job.status, true AS written, job.owner FROM job
            UNION ALL
            SELECT j.id, j.status, false, j.owner FROM jobs j
            WHERE j.id = ANY($1) AND j.id NOT IN (SELECT id FROM job)""",
        job_ids,
        worker_id,
    )
    if notifier is not None:
        for r in rows:
            if r["written"]:
                notifier.changed(r["id"], r["owner"])
    found = {r["id"]: (r["written"], r["status"]) for r in rows}
    return [found.get(job_id, (False, "missing")) for job_id in job_ids]


async def requeue_interrupted(
    pool: asyncpg.Pool,
    job_id: uuid.UUID,
    worker_id: str,
    *,
    reason: str = "shutdown",
    notifier: Notifier | None = None,
) -> bool:
    """The job goes back to queued, keeping remote ids. Only a clean shutdown hands back the
    attempt it used: anything else that interrupts a job again and again must end in
    RUNNER_MAX_JOB_ATTEMPTS, never in a loop."""
    row = await pool.fetchrow(
        """WITH job AS (
                UPDATE jobs SET status = 'queued', worker_id = NULL,
                    attempts = CASE WHEN $3 = 'shutdown' THEN greatest(attempts - 1, 0) ELSE attempts END
                WHERE id = $1 AND status = 'running' AND worker_id = $2 RETURNING id, owner, backends),
            ex AS (
                UPDATE executions e SET status = 'queued'
                FROM job WHERE e.job_id = job.id AND e.status = 'running' RETURNING e.id),
            ev AS (
                INSERT INTO job_events (job_id, kind, actor, detail)
                SELECT id, 'requeued', 'system',
                    jsonb_build_object('reason', $3::text, 'worker', $2::text,
                                       'executions', (SELECT count(*) FROM ex))
                FROM job)
            SELECT owner, backends FROM job""",
        job_id,
        worker_id,
        reason,
    )
    if row is None:
        return False
    if notifier is not None:
        notifier.changed(job_id, row["owner"])
        notifier.work(row["backends"])
    return True


async def renew_lease(
    pool: asyncpg.Pool, job_ids: list[uuid.UUID], worker_id: str, lease_s: float, backends: list[str]
) -> tuple[dict[uuid.UUID, str], list[uuid.UUID]]:
    """Renew this worker's lease (one row) and compare what Postgres says it holds with what
    it holds: returns the held jobs that are no longer ours (with their status), and the jobs
    Postgres says run here that are not among `job_ids`. A plain read: it takes no lock a
    cancel would wait for."""
    rows = await pool.fetch(
        f"""WITH lease AS ({_HEARTBEAT})
            SELECT j.id, j.status, true AS held FROM jobs j
            WHERE j.id = ANY($1) AND NOT (j.status = 'running' AND j.worker_id IS NOT DISTINCT FROM $2)
            UNION ALL
            SELECT j.id, j.status, false FROM jobs j
            WHERE j.status = 'running' AND j.worker_id = $2 AND NOT j.id = ANY($1)""",
        job_ids,
        worker_id,
        lease_s,
        backends,
    )
    return ({r["id"]: r["status"] for r in rows if r["held"]}, [r["id"] for r in rows if not r["held"]])


async def end_lease(pool: asyncpg.Pool, worker_id: str) -> None:
    """A clean shutdown: the worker holds nothing any more."""
    await pool.execute("DELETE FROM workers WHERE id = $1", worker_id)


async def requeue_expired(
    pool: asyncpg.Pool,
    *,
    max_attempts: int,
    lease_s: float,
    instance_id: str,
    limit: int = 500,
    notifier: Notifier | None = None,
) -> list[asyncpg.Record]:
    """Requeue running jobs whose lease expired (their instance died); fail those out of attempts.
    Never the caller's own: after a stall its lease may have lapsed, but what it holds it
    judges itself, at its next renewal (jobs no task holds go back to the queue there).

    A lease is judged on time Postgres has been up: it has expired only if its worker failed
    to renew it for a whole lease since the server started, so a database restart never
    makes live instances look dead (they renew as soon as it is back).

    A failed job's executions that hold a remote id owe the backend a cancel: the GPU may run on.
    """
    rows: list[asyncpg.Record] = await pool.fetch(
        f"""WITH expired AS (
                SELECT j.id, j.attempts, j.worker_id FROM jobs j
                WHERE j.status = 'running'
                  AND pg_postmaster_start_time() + make_interval(secs => $3) < now()
                  AND j.worker_id IS DISTINCT FROM $4
                  AND NOT EXISTS (
                    SELECT 1 FROM workers w WHERE w.id = j.worker_id AND w.lease_expires_at >= now())
                ORDER BY j.started_at LIMIT $2 FOR UPDATE OF j SKIP LOCKED),
            job AS (
                UPDATE jobs j SET
                    status = CASE WHEN x.attempts >= $1 THEN 'failed' ELSE 'queued' END,
                    error = CASE WHEN x.attempts >= $1
                        THEN format('its worker was lost %s times (RUNNER_MAX_JOB_ATTEMPTS=%s); giving up',
                                    x.attempts, $1) END,
                    finished_at = CASE WHEN x.attempts >= $1 THEN now() END,
                    worker_id = NULL
                FROM expired x WHERE j.id = x.id
                RETURNING j.id, j.status, j.owner, j.backends, x.worker_id AS lost_worker, x.attempts),
            ex AS (
                UPDATE executions e SET
                    status = CASE WHEN job.status = 'failed' THEN 'failed' ELSE 'queued' END,
                    error = CASE WHEN job.status = 'failed' THEN 'the job ran out of attempts' END,
                    finished_at = CASE WHEN job.status = 'failed' THEN now() END,
                    {owe_remote_cancel("job.status = 'failed' AND e.remote_id IS NOT NULL")}
                FROM job WHERE e.job_id = job.id AND e.status IN ('queued', 'running')
                RETURNING e.id),
            ev AS (
                INSERT INTO job_events (job_id, kind, actor, detail)
                SELECT id, CASE WHEN status = 'failed' THEN 'failed' ELSE 'requeued' END, 'system',
                    jsonb_build_object('reason', 'lease_expired', 'lost_worker', lost_worker,
                                       'attempts', attempts)
                FROM job)
            SELECT id, status, owner, backends FROM job""",
        max_attempts,
        limit,
        lease_s,
        instance_id,
    )
    if notifier is not None:
        for r in rows:
            notifier.changed(r["id"], r["owner"])
            if r["status"] == "queued":
                notifier.work(r["backends"])
    # Forget workers long gone (nothing of theirs is left running after the requeue).
    await pool.execute("DELETE FROM workers WHERE lease_expires_at < now() - interval '1 day'")
    return rows


# -- housekeeping (runner.worker.housekeeping runs these) ------------------------------------

# Whether $1 is the fleet's housekeeper: the live worker instance with the lowest id (null
# when no worker is live; a stalled one's lease lapses and the next takes over). And the
# figures it last published, unless older than $2 seconds (it is gone: no figures).
HOUSEKEEPER = """SELECT min(w.id) = $1 AS keeper,
        (SELECT figures FROM fleet_gauges WHERE counted_at > now() - make_interval(secs => $2)) AS figures
    FROM workers w WHERE w.lease_expires_at >= now()"""
PUBLISH_GAUGES = """INSERT INTO fleet_gauges (one, figures, counted_at) VALUES (true, $1::jsonb, now())
    ON CONFLICT (one) DO UPDATE SET figures = EXCLUDED.figures, counted_at = EXCLUDED.counted_at"""
RETENTION_LOCK_KEY = 0x72756E6E65720002  # one instance at a time deletes old jobs
WAITING_LOCK_KEY = 0x72756E6E65720003  # one instance at a time notes why jobs wait
TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"  # $1 one of the keys above
RETENTION_ON = "SET LOCAL runner.retention = 'on'"  # the audit trail allows the delete below

# Queued jobs per backend that no live instance has (they wait for one; they do not fail).
UNCLAIMABLE = """SELECT b AS backend, count(*) AS jobs FROM jobs j, unnest(j.backends) b
    WHERE j.status = 'queued' AND NOT EXISTS (
        SELECT 1 FROM workers w WHERE w.lease_expires_at >= now() AND b = ANY(w.backends))
    GROUP BY b"""

# Per backend: queued jobs needing it and the oldest one's age (one scan, by the partial index).
QUEUE = """SELECT b AS backend, count(*) AS jobs, extract(epoch FROM now() - min(j.created_at))::float8 AS age
    FROM jobs j, unnest(j.backends) b WHERE j.status = 'queued' GROUP BY b"""

# Webhook deliveries owed, fleet-wide (runner_webhooks_pending).
WEBHOOKS_PENDING = "SELECT count(*) FROM webhook_outbox WHERE state = 'pending'"

# A `waiting` event, once per reason, for each queued job needing one of $1 (backends no live
# instance has); returns the jobs noted and their owners.
NOTE_WAITING = """WITH stranded AS (
        SELECT j.id, runner_waiting_reason(j.backends) AS reason FROM jobs j
        WHERE j.status = 'queued' AND j.backends && $1::text[]),
    noted AS (
        INSERT INTO job_events (job_id, kind, actor, detail)
        SELECT s.id, 'waiting', 'system', jsonb_build_object('reason', s.reason) FROM stranded s
        WHERE s.reason IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM job_events e WHERE e.job_id = s.id AND e.kind = 'waiting'
            AND e.detail->>'reason' = s.reason)
        RETURNING job_id)
    SELECT n.job_id, j.owner FROM noted n JOIN jobs j ON j.id = n.job_id"""

# Executions per backend whose work may still run at the provider after a cancel: not yet
# seen over, tried and not accepted, or owed a minute with no try (no live instance has the
# backend, or its cancels queue under the provider's rate limit; a new one is being sent).
UNCONFIRMED = """SELECT backend, count(*) AS n FROM executions
    WHERE (remote_cancel = 'acknowledged' AND remote_cancel_due IS NOT NULL)
       OR (remote_cancel = 'pending'
           AND (remote_cancel_tries > 0 OR remote_cancel_due < now() - interval '1 minute'))
    GROUP BY backend"""

# Up to $3 finished jobs older than $1 days + $2 seconds, with their executions, events and
# idempotency keys; the number deleted.
DELETE_FINISHED = """WITH old AS (
        SELECT id FROM jobs WHERE status IN ('completed', 'failed', 'cancelled')
          AND finished_at < now() - make_interval(days => $1::int, secs => $2)
        ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED),
    events AS (DELETE FROM job_events WHERE job_id IN (SELECT id FROM old)),
    executions AS (DELETE FROM executions WHERE job_id IN (SELECT id FROM old)),
    keys AS (DELETE FROM idempotency_keys WHERE job_id IN (SELECT id FROM old)),
    gone AS (DELETE FROM jobs WHERE id IN (SELECT id FROM old) RETURNING 1)
    SELECT count(*) FROM gone"""

# A turn at a limited backend (runner.worker.slots): $1 execution, $2 backend, $3 its slots.
TAKE_SLOT = "SELECT runner_take_slot($1, $2, $3)"
