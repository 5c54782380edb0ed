"""The webhook statements: the wallets' signing secrets (webhook_secrets) and the outbox's
claims and outcomes (webhook_outbox, migration 0014). Positional parameters are listed above
each statement."""

from __future__ import annotations

from runner.jobs import JOB_COLUMNS

ROTATION_OVERLAP = "24 hours"  # a rotated secret still signs this long (receivers catch up)

# $1 owner, $2 a new secret: the wallet's secret, made if it has none. None when another
# request made it after this statement's snapshot (read it again).
CURRENT_SECRET = """
WITH made AS (INSERT INTO webhook_secrets (owner, secret) VALUES ($1, $2)
              ON CONFLICT (owner) DO NOTHING RETURNING secret)
SELECT secret FROM made UNION ALL SELECT secret FROM webhook_secrets WHERE owner = $1
LIMIT 1"""

# $1 owner, $2 the new secret; the one it replaces stays valid for ROTATION_OVERLAP.
ROTATE_SECRET = f"""
INSERT INTO webhook_secrets (owner, secret) VALUES ($1, $2)
ON CONFLICT (owner) DO UPDATE SET secret = EXCLUDED.secret,
    previous = webhook_secrets.secret, previous_until = now() + interval '{ROTATION_OVERLAP}'
RETURNING secret"""

# $1 owner: the rotated-out secret, while it still signs.
PREVIOUS_SECRET = "SELECT previous FROM webhook_secrets WHERE owner = $1 AND previous_until > now()"

# $1 how many, $2 the claim's lease (s): due rows, each after its job's earlier pending ones.
CLAIM = """
WITH due AS (
    SELECT w.id FROM webhook_outbox w
    WHERE w.state = 'pending' AND w.next_attempt_at <= now()
      AND NOT EXISTS (SELECT 1 FROM webhook_outbox p
                      WHERE p.job_id = w.job_id AND p.state = 'pending' AND p.id < w.id)
    ORDER BY w.next_attempt_at LIMIT $1 FOR UPDATE OF w SKIP LOCKED)
UPDATE webhook_outbox o SET attempts = o.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
FROM due, jobs j WHERE o.id = due.id AND j.id = o.job_id
RETURNING o.id, o.msg_id, o.job_id, o.event, o.url, o.created_at, o.payload, o.attempts, j.owner"""

# In how many seconds the first row that CLAIM could take comes due (a row waiting for an
# earlier one of its job is not: that one's time counts); NULL when none is pending. It walks
# the due index in order and stops at the first such row: one row when each job has one
# event pending, but the whole backlog when every job's later events wait behind a first one
# retried with backoff (a receiver down: benchmarks/webhook_backlog.py). The pending count,
# which always cost the whole backlog, is the housekeeper's (store.WEBHOOKS_PENDING).
NEXT_DUE = """
SELECT extract(epoch FROM w.next_attempt_at - now())::float8 FROM webhook_outbox w
WHERE w.state = 'pending'
  AND NOT EXISTS (SELECT 1 FROM webhook_outbox p
                  WHERE p.job_id = w.job_id AND p.state = 'pending' AND p.id < w.id)
ORDER BY w.next_attempt_at LIMIT 1"""

# $1 job id: the job as a delivery's body shows it.
JOB = f"SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = $1"

# $1 row id, $2 the body: fixed at the first attempt (another instance's, if it was first).
FIX_PAYLOAD = "UPDATE webhook_outbox SET payload = coalesce(payload, $2) WHERE id = $1 RETURNING payload"

# $1 row id, $2 instance id, $3 the receiver's status.
DELIVERED = """
WITH done AS (
    UPDATE webhook_outbox SET state = 'delivered', finished_at = now()
    WHERE id = $1 AND state = 'pending' RETURNING job_id, execution_id, msg_id, event, attempts)
INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
SELECT job_id, execution_id, 'webhook_delivered', $2, jsonb_build_object(
    'event', event, 'webhook_id', msg_id, 'attempt', attempts, 'status', $3::int) FROM done"""

# $1 row id, $2 instance id, $3 retry delay (s), $4 retry-for (s), $5 error, $6 status.
# Retried at now + $3 s, but never past created_at + $4 s: then it is given up.
FAILED = """
WITH f AS (
    UPDATE webhook_outbox SET
        state = CASE WHEN now() >= created_at + make_interval(secs => $4) THEN 'failed' ELSE 'pending' END,
        finished_at = CASE WHEN now() >= created_at + make_interval(secs => $4) THEN now() END,
        next_attempt_at = least(now() + make_interval(secs => $3), created_at + make_interval(secs => $4))
    WHERE id = $1 AND state = 'pending'
    RETURNING job_id, execution_id, msg_id, event, attempts, state, next_attempt_at)
INSERT INTO job_events (job_id, execution_id, kind, actor, detail)
SELECT job_id, execution_id, 'webhook_failed', $2, jsonb_build_object(
    'event', event, 'webhook_id', msg_id, 'attempt', attempts, 'error', $5::text,
    'status', $6::int, 'gave_up', state = 'failed',
    'next_attempt_at', CASE WHEN state = 'pending' THEN next_attempt_at END) FROM f"""
