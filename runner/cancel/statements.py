"""The cancel statements: each does the job, its executions, the audit row and the cancel's
NOTIFY (its only one: watchers hear of it from the canceller's Notifier, after the commit) in
one statement and one commit, and names the statuses it may leave."""

from __future__ import annotations

from runner.db import notify


def owe_remote_cancel(when: str, due: str = "now()") -> str:
    """The SET clause that marks a cancel owed to the backend (`remote_cancel` 'pending', due
    at `due`) where `when` holds: the one way every statement that may leave work running
    at a provider records it. The holder of the job sends it; the sweeper (runner.cancel.
    remote) sends whatever is still owed once due, from any instance."""
    return f"""remote_cancel = CASE WHEN {when} THEN 'pending' ELSE remote_cancel END,
    remote_cancel_due = CASE WHEN {when} THEN {due} ELSE remote_cancel_due END"""


def _exec_cancel_set(backends: str, grace: str) -> str:
    """Executions that were running owe the backend a cancel when they have a remote id, or
    when their backend cancels through a configured URL (`backends`: such backends' names)."""
    owes = f"e.status = 'running' AND (e.remote_id IS NOT NULL OR e.backend = ANY({backends}::text[]))"
    return f"""status = 'cancelled', finished_at = now(),
    {owe_remote_cancel(owes, f"now() + make_interval(secs => {grace})")}"""


def _job_cancel_set(actor: str, reason: str) -> str:
    return f"""status = 'cancelled', cancelled_at = now(), cancelled_by = {actor},
    cancel_reason = {reason}, finished_at = now(), worker_id = NULL"""


# What each statement's notification names, and the instance holding it (runner.db.notify).
_HELD_JOB = f"SELECT t.worker_id AS holder, {notify.cancel_entry_sql('job.id')} AS entry FROM job, target t"
_HELD_EXECUTION = (
    f"SELECT t.worker_id AS holder, {notify.cancel_entry_sql('$1', 'ex.id')} AS entry FROM ex, target t"
)

# $1 job, $2 actor, $3 reason, $4 actor is admin, $5 remote-cancel backends, $6 grace.
CANCEL_JOB = f"""
WITH target AS (
    SELECT id, status, owner, cancelled_at, worker_id FROM jobs WHERE id = $1 FOR NO KEY UPDATE),
job AS (
    UPDATE jobs j SET {_job_cancel_set("$2", "$3")}
    FROM target t
    WHERE j.id = t.id AND t.status IN ('queued', 'running') AND (t.owner = $2 OR $4)
    RETURNING j.id, j.cancelled_at),
execs AS (
    UPDATE executions e SET {_exec_cancel_set("$5", "$6")}
    FROM job WHERE e.job_id = job.id AND e.status IN ('queued', 'running')
    RETURNING e.id),
event AS (
    INSERT INTO job_events (job_id, kind, actor, detail)
    SELECT job.id, 'cancelled', $2, jsonb_build_object(
        'reason', $3::text, 'previous_status', t.status,
        'executions_cancelled', (SELECT count(*) FROM execs))
    FROM job, target t),
notify AS (
    {notify.cancel_notify_sql(_HELD_JOB)})
SELECT t.status AS previous_status, t.owner, coalesce(job.cancelled_at, t.cancelled_at) AS cancelled_at,
    job.id IS NOT NULL AS changed, (SELECT count(*) FROM execs) AS executions_cancelled,
    (SELECT count(*) FROM notify) AS notified
FROM target t LEFT JOIN job ON true"""

# $1 job, $2 actor, $3 reason, $4 actor is admin, $5 remote-cancel backends, $6 grace, $7 execution.
CANCEL_EXECUTION = f"""
WITH target AS (
    SELECT j.status AS job_status, j.owner, j.worker_id, e.id AS execution_id, e.status, e.finished_at
    FROM jobs j JOIN executions e ON e.job_id = j.id
    WHERE j.id = $1 AND e.id = $7 FOR NO KEY UPDATE OF j, e),
ex AS (
    UPDATE executions e SET {_exec_cancel_set("$5", "$6")}
    FROM target t
    WHERE e.id = t.execution_id AND t.status IN ('queued', 'running') AND (t.owner = $2 OR $4)
    RETURNING e.id, e.finished_at),
others AS (
    SELECT status FROM executions WHERE job_id = $1 AND id <> $7
    UNION ALL SELECT 'cancelled' FROM ex),
-- No task holds a queued job: if nothing of it is left to run, it is finished here.
fin AS (
    UPDATE jobs j SET
        status = f.final, finished_at = now(),
        cancelled_at = CASE WHEN f.final = 'cancelled' THEN now() END,
        cancelled_by = CASE WHEN f.final = 'cancelled' THEN $2 END,
        cancel_reason = CASE WHEN f.final = 'cancelled' THEN $3 END
    FROM (SELECT runner_final_status(array_agg(status)) AS final FROM others) f
    WHERE j.id = $1 AND j.status = 'queued' AND f.final IS NOT NULL AND EXISTS (SELECT 1 FROM ex)
    RETURNING j.status),
event AS (
    INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
    SELECT $1, ex.id, 'execution_cancelled', $2, jsonb_build_object(
        'reason', $3::text, 'previous_status', t.status)
    FROM ex, target t
    UNION ALL
    SELECT $1, NULL, fin.status, $2, jsonb_build_object('reason', 'its last execution was cancelled')
    FROM fin),
notify AS (
    {notify.cancel_notify_sql(_HELD_EXECUTION)})
SELECT t.job_status, t.owner, t.status AS previous_status,
    coalesce(ex.finished_at, t.finished_at) AS cancelled_at, ex.id IS NOT NULL AS changed,
    (SELECT count(*) FROM notify) AS notified
FROM target t LEFT JOIN ex ON true"""


def _cancellable(where: str) -> str:
    """The wallet's ($1) active jobs that the filter condition `where` (runner.filters)
    matches. The literal status list lets the partial index on active jobs serve it."""
    return f"j.owner = $1 AND j.status IN ('queued', 'running') AND {where}"


def cancel_matching(where: str) -> str:
    """A bulk cancel of the jobs `_cancellable(where)` names, at most a chunk of them: one
    atomic statement (see Canceller.cancel_all). $1 owner (and actor), $2 reason, $3
    remote-cancel backends, $4 grace, $5 chunk size, $6 the sending instance (which signals
    its own tasks itself, and so skips these notifications), $7 detail added to each audit
    row (jsonb); the filter's values from $8."""
    return f"""
WITH targets AS (
    SELECT j.id, j.status, j.worker_id FROM jobs j WHERE {_cancellable(where)}
    ORDER BY j.id LIMIT $5 FOR NO KEY UPDATE),
job AS (
    UPDATE jobs j SET {_job_cancel_set("$1", "$2")}
    FROM targets t WHERE j.id = t.id
    RETURNING j.id, t.status AS previous_status, t.worker_id AS holder),
open_execs AS (
    SELECT e.id FROM executions e JOIN job ON e.job_id = job.id
    WHERE e.status IN ('queued', 'running') ORDER BY e.id FOR NO KEY UPDATE OF e),
execs AS (
    UPDATE executions e SET {_exec_cancel_set("$3", "$4")}
    FROM open_execs o WHERE e.id = o.id
    RETURNING e.id),
event AS (
    INSERT INTO job_events (job_id, kind, actor, detail)
    SELECT id, 'cancelled', $1, jsonb_build_object(
        'reason', $2::text, 'previous_status', previous_status) || $7::jsonb
    FROM job),
-- Running jobs' notifications, to their holders in chunks (runner.db.notify): cancelling
-- 10,000 jobs wakes each holder a few times, not 10,000.
notify AS (
    {notify.cancel_notify_sql(f"SELECT holder, {notify.cancel_entry_sql('id')} AS entry FROM job", "$6")})
SELECT coalesce((SELECT array_agg(id) FROM job), '{{}}') AS ids,
    coalesce((SELECT array_agg(id) FROM job WHERE previous_status = 'running'), '{{}}') AS running,
    (SELECT count(*) FROM execs) AS executions_cancelled,
    (SELECT count(*) FROM notify) AS notified"""


def matching(where: str) -> str:
    """What `cancel_matching(where)` would cancel, cancelling nothing: how many (`found`),
    and the first `$2` ids, newest first. $1 owner; the filter's values from $3."""
    return f"""
SELECT j.id, count(*) OVER () AS found FROM jobs j WHERE {_cancellable(where)}
ORDER BY j.created_at DESC, j.id DESC LIMIT $2"""


# Whether a job's task has stopped, wherever it ran: its last start was followed by a
# recorded stop or requeue, or it never started. $1 job.
NO_TASK_LEFT = """
SELECT coalesce(max(id) FILTER (WHERE kind IN ('task_stopped', 'requeued')), 0)
       >= coalesce(max(id) FILTER (WHERE kind = 'started'), 0)
FROM job_events WHERE job_id = $1"""
