"""The cancel path's statements, all of them: the cancels (the canceller runs them), the stop
records (stops), the remote cancels and their sweep (remote), and the check `?wait=true`
makes (waiting). A cancel does the job, its executions, the audit row, the NOTIFY to the
instance holding it and its watchers' change hint in one statement and one commit (one
notifying commit: runner.db.notify), and names the statuses it may leave."""

from __future__ import annotations

from runner.db import notify
from runner.jobs import may_act


def owe_remote_cancel(when: str, due: str = "now()") -> str:
    """The SET clause that marks a cancel owed to the backend (`remote_cancel` 'pending', due
    at `due`) where `when` holds: the one way every statement that may leave work running
    at a provider records it. The holder of the job sends it; the sweeper (runner.cancel.
    remote) sends whatever is still owed once due, from any instance with the backend."""
    return f"""remote_cancel = CASE WHEN {when} THEN 'pending' ELSE remote_cancel END,
    remote_cancel_due = CASE WHEN {when} THEN {due} ELSE remote_cancel_due END"""


def _exec_cancel_set(backends: str, grace: str) -> str:
    """Executions that were running owe the backend a cancel when they have a remote id, or
    when their backend cancels through a configured URL (`backends`: such backends' names)."""
    owes = f"e.status = 'running' AND (e.remote_id IS NOT NULL OR e.backend = ANY({backends}::text[]))"
    return f"""status = 'cancelled', finished_at = now(),
    {owe_remote_cancel(owes, f"now() + make_interval(secs => {grace})")}"""


def finish_job_set(final: str, actor: str, reason: str) -> str:
    """The SET clause that finishes a job with the status `final` (an SQL expression): the one
    place a job is set cancelled -- when `final` is 'cancelled', by `actor` for `reason`."""
    cancelled = f"{final} = 'cancelled'"
    return f"""status = {final}, finished_at = now(), worker_id = NULL,
    cancelled_at = CASE WHEN {cancelled} THEN now() END,
    cancelled_by = CASE WHEN {cancelled} THEN {actor} END,
    cancel_reason = CASE WHEN {cancelled} THEN {reason} END"""


def _job_cancel_set(actor: str, reason: str) -> str:
    return finish_job_set("'cancelled'", actor, reason)


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
    WHERE j.id = t.id AND t.status IN ('queued', 'running') AND {may_act("t.owner", "$2", "$4")}
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
    {notify.cancel_notify_sql(_HELD_JOB)}
    UNION ALL SELECT {notify.change_notify_sql("job.id", "t.owner")} FROM job, target t)
SELECT t.status AS previous_status, t.owner, {may_act("t.owner", "$2", "$4")} AS allowed,
    coalesce(job.cancelled_at, t.cancelled_at) AS cancelled_at,
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
    WHERE e.id = t.execution_id AND t.status IN ('queued', 'running') AND {may_act("t.owner", "$2", "$4")}
    RETURNING e.id, e.finished_at),
others AS (
    SELECT status FROM executions WHERE job_id = $1 AND id <> $7
    UNION ALL SELECT 'cancelled' FROM ex),
-- No task holds a queued job: if nothing of it is left to run, it is finished here.
fin AS (
    UPDATE jobs j SET {finish_job_set("f.final", "$2", "$3")}
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
    {notify.cancel_notify_sql(_HELD_EXECUTION)}
    UNION ALL SELECT {notify.change_notify_sql("$1", "t.owner")} FROM ex, target t)
SELECT t.job_status, t.owner, {may_act("t.owner", "$2", "$4")} AS allowed, t.status AS previous_status,
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


# -- the stop records (runner.cancel.stops) -------------------------------------------------

# Tasks of cancelled jobs have stopped: an audit row each with its latency, in one statement for
# the batch; the reason comes from the row (a timeout and a user's cancel stop the task alike).
# Typed arrays, not a JSON document: asyncpg encodes them in binary, cheaper for the thousands
# of rows a cancel-all brings. $1 jobs, $2 reasons, $3 local latencies (ms), $4 executions,
# $5 instance, $6 executions whose work ended with their call, $7 their GPU-seconds.
RECORD_STOPS = """
WITH s AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::float8[], $4::int[])
        AS s(job_id, reason, local_latency_ms, executions)),
spent AS (
    UPDATE executions e SET gpu_seconds = coalesce(e.gpu_seconds, x.seconds),
        remote_stopped_at = coalesce(e.remote_stopped_at, clock_timestamp())
    FROM unnest($6::uuid[], $7::float8[]) AS x(id, seconds)
    WHERE e.id = x.id AND e.status = 'cancelled'),
ev AS (
    INSERT INTO job_events (job_id, kind, actor, detail)
    SELECT j.id, 'task_stopped', $5, jsonb_strip_nulls(jsonb_build_object(
        'reason', CASE WHEN j.status = 'cancelled' AND j.cancelled_by = 'system'
                       THEN coalesce(j.cancel_reason, s.reason)
                       WHEN j.status = 'cancelled' THEN 'cancelled' ELSE s.reason END,
        'executions', s.executions,
        'latency_ms', round((extract(epoch FROM clock_timestamp() - j.cancelled_at)
                             * 1000)::numeric, 3),
        'local_latency_ms', round(s.local_latency_ms::numeric, 3)))
    FROM s JOIN jobs j ON j.id = s.job_id
    RETURNING job_id)
SELECT ev.job_id, j.owner FROM ev JOIN jobs j ON j.id = ev.job_id"""


# -- the remote cancels (runner.cancel.remote) ----------------------------------------------

# The cancels due (their holder is gone, or an earlier try failed) and the acknowledged ones
# whose work is due a look, claimed for $2 seconds. $1 how many; $3 the backends this
# instance has (the others are left to an instance that can send them).
SWEEP_DUE = """
WITH due AS (
    SELECT id FROM executions
    WHERE remote_cancel IN ('pending', 'acknowledged') AND remote_cancel_due <= now()
      AND backend = ANY($3::text[])
    ORDER BY remote_cancel_due LIMIT $1 FOR UPDATE SKIP LOCKED)
UPDATE executions e SET remote_cancel_due = now() + make_interval(secs => $2)
FROM due WHERE e.id = due.id
RETURNING e.id, e.job_id, e.backend, e.remote_id, e.remote_urls, e.remote_cancel,
    e.remote_cancel_tries,
    extract(epoch FROM now() - e.remote_cancel_acknowledged_at) AS acknowledged_s"""

# $1 job, $2 execution, $3 outcome, $4 answer, $5 instance, $6 backoff cap, $7 Retry-After
# (seconds or null), $8 when to poll an acknowledged cancel's work (seconds; null: never).
REMOTE_CANCEL_RECORD = """
WITH ex AS (
    UPDATE executions SET
        remote_cancel = CASE WHEN $3 IN ('acknowledged', 'failed', 'gone') THEN $3 ELSE 'pending' END,
        remote_cancel_error = CASE WHEN $3 = 'acknowledged' THEN NULL ELSE $4 END,
        error = CASE WHEN $3 = 'failed' THEN 'remote cancel refused: ' || $4 ELSE error END,
        remote_cancel_tries = remote_cancel_tries + 1,
        remote_cancel_acknowledged_at = CASE WHEN $3 = 'acknowledged' THEN now() END,
        remote_cancel_due = CASE
            -- backoff with jitter (three quarters to the whole step); a Retry-After is a minimum
            WHEN $3 = 'retry' THEN now() + make_interval(secs => greatest(coalesce($7::float8, 0),
                least($6::int, 2 ^ least(remote_cancel_tries + 1, 20)) * (0.75 + random() / 4)))
            WHEN $3 = 'acknowledged' AND $8::float8 IS NOT NULL THEN now() + make_interval(secs => $8) END
    WHERE id = $2 AND remote_cancel = 'pending'
    RETURNING id, job_id, remote_id, remote_cancel_tries),
ev AS (
    INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
    SELECT $1, ex.id, 'remote_cancel', $5, jsonb_build_object(
        'outcome', $3::text, 'answer', $4::text, 'remote_id', ex.remote_id, 'try', ex.remote_cancel_tries)
    FROM ex)
SELECT j.owner FROM ex JOIN jobs j ON j.id = ex.job_id"""


# An acknowledged cancel whose work is over: confirmed, with when and what it cost.
# $1 execution, $2 the provider's GPU-seconds (or null), $3 instance, $4 the answer, $5 the
# provider's own end time (or null: when it was seen over).
REMOTE_STOP_CONFIRMED = """
WITH ex AS (
    UPDATE executions SET remote_cancel = 'confirmed', remote_stopped_at = coalesce($5::timestamptz, now()),
        remote_cancel_due = NULL,
        gpu_seconds = coalesce($2::float8, gpu_seconds)
    WHERE id = $1 AND remote_cancel = 'acknowledged'
    RETURNING id, job_id, remote_id, extract(epoch FROM now() - finished_at) AS after_cancel_s),
ev AS (
    INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
    SELECT ex.job_id, ex.id, 'remote_stop_confirmed', $3, jsonb_build_object(
        'remote_id', ex.remote_id, 'answer', $4::text, 'after_cancel_s', round(ex.after_cancel_s::numeric, 3))
    FROM ex)
SELECT ex.after_cancel_s, ex.job_id, j.owner FROM ex JOIN jobs j ON j.id = ex.job_id"""

# Over by the provider's word, but a word that proves no stop (RunPod's CANCELLED, answered at
# once whatever the worker does): stays `acknowledged`, and nothing more can be learnt by
# polling. $1 execution, $2 instance, $3 the answer.
REMOTE_CANCEL_REPORTED = """
WITH ex AS (
    UPDATE executions SET remote_cancel_due = NULL
    WHERE id = $1 AND remote_cancel = 'acknowledged'
    RETURNING id, job_id, remote_id),
ev AS (
    INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
    SELECT ex.job_id, ex.id, 'remote_cancel_reported', $2, jsonb_build_object(
        'remote_id', ex.remote_id, 'answer', $3::text,
        'proves_stop', false)
    FROM ex)
SELECT ex.job_id, j.owner FROM ex JOIN jobs j ON j.id = ex.job_id"""

# The provider no longer knows the work (404): nothing more can be sent or learnt.
# $1 execution, $2 instance, $3 the answer.
REMOTE_WORK_GONE = """
WITH ex AS (
    UPDATE executions SET remote_cancel = 'gone', remote_cancel_due = NULL, remote_cancel_error = $3
    WHERE id = $1 AND remote_cancel IN ('pending', 'acknowledged')
    RETURNING id, job_id, remote_id),
ev AS (
    INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
    SELECT ex.job_id, ex.id, 'remote_cancel', $2, jsonb_build_object(
        'outcome', 'gone', 'answer', $3::text, 'remote_id', ex.remote_id)
    FROM ex)
SELECT ex.job_id, j.owner FROM ex JOIN jobs j ON j.id = ex.job_id"""

# Remote cancels to one backend, paced across every instance: take the backend's next free
# send time and move it on by one interval, in one statement (the row lock orders takers).
# $1 backend, $2 seconds between sends. Returns how long to wait for the slot taken.
CANCEL_PACE = """
INSERT INTO cancel_pacing AS p (backend, next_at) VALUES ($1, clock_timestamp() + make_interval(secs => $2))
ON CONFLICT (backend) DO UPDATE
    SET next_at = greatest(p.next_at, clock_timestamp()) + make_interval(secs => $2)
RETURNING extract(epoch FROM next_at - clock_timestamp())::float8 - $2"""

# Still running: poll again after $2 seconds; $3: a cancel was sent again (tries + 1).
REMOTE_STILL_RUNNING = """
UPDATE executions SET remote_cancel_due = now() + make_interval(secs => $2),
    remote_cancel_tries = remote_cancel_tries + $3::int
WHERE id = $1 AND remote_cancel = 'acknowledged'"""
