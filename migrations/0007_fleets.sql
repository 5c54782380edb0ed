-- Fleets and fair share.

-- Claim by capability: a job's backends are kept on the job (they never change), so that a
-- claim skips the jobs this instance cannot run without reading their executions.
ALTER TABLE jobs ADD COLUMN backends text[] NOT NULL DEFAULT '{}';
UPDATE jobs j SET backends = coalesce(
    (SELECT array_agg(DISTINCT e.backend ORDER BY e.backend) FROM executions e WHERE e.job_id = j.id), '{}');
-- What each live instance can run, for the gauge of jobs no instance can claim.
ALTER TABLE workers ADD COLUMN backends text[] NOT NULL DEFAULT '{}';

-- Fair share: claims go round the wallets, each wallet's oldest queued job first, the
-- wallet served least recently first (when each last had a job claimed).
CREATE INDEX jobs_queued_owner_idx ON jobs (owner, created_at, id) WHERE status = 'queued';
CREATE TABLE wallet_turns (
    owner            text PRIMARY KEY,
    last_claimed_at  timestamptz NOT NULL
);
-- Per-backend concurrency: a backend's slots in use are its running executions.
CREATE INDEX executions_running_backend_idx ON executions (backend) WHERE status = 'running';
-- Retention: the oldest finished jobs first.
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE status IN ('completed', 'failed', 'cancelled');

-- Take a slot of a backend limited to `slots` running executions, across every instance:
-- the execution goes from queued to running if fewer than `slots` of the backend's run.
-- The per-backend lock makes the count and the update one step. 'gone': the execution is
-- no longer queued (cancelled meanwhile).
CREATE FUNCTION runner_take_slot(p_execution uuid, p_backend text, p_slots integer)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    in_use bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('runner_slots:' || p_backend, 0));
    SELECT count(*) INTO in_use FROM executions WHERE backend = p_backend AND status = 'running';
    IF in_use >= p_slots THEN
        RETURN CASE WHEN EXISTS (SELECT 1 FROM executions WHERE id = p_execution AND status = 'queued')
                    THEN 'full' ELSE 'gone' END;
    END IF;
    UPDATE executions SET status = 'running', started_at = coalesce(started_at, now())
    WHERE id = p_execution AND status = 'queued';
    IF NOT FOUND THEN
        RETURN 'gone';
    END IF;
    PERFORM runner_notify_job(job_id) FROM executions WHERE id = p_execution;
    RETURN 'taken';
END $$;

-- Retention deletes old finished jobs with their events: the audit trail stays append-only
-- for everything else (the setting is set for the retention's own transactions only).
CREATE OR REPLACE FUNCTION runner_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('runner.retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

-- Submitting now records the job's backends.
CREATE OR REPLACE FUNCTION runner_submit(
    p_job uuid, p_owner text, p_timeout integer, p_metadata jsonb, p_executions jsonb,
    p_key text, p_hash text, p_max integer)
RETURNS TABLE (outcome text, job uuid, created timestamptz, active bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    prior record;
    n bigint;
    at timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_owner, 42));
    IF p_key IS NOT NULL THEN
        SELECT k.job_id, k.request_hash INTO prior FROM idempotency_keys k
        WHERE k.owner = p_owner AND k.key = p_key AND k.created_at > now() - interval '24 hours';
        IF FOUND THEN
            RETURN QUERY SELECT CASE WHEN prior.request_hash = p_hash THEN 'existing' ELSE 'conflict' END,
                                prior.job_id, NULL::timestamptz, NULL::bigint;
            RETURN;
        END IF;
    END IF;
    SELECT count(*) INTO n FROM jobs j WHERE j.owner = p_owner AND j.status IN ('queued', 'running');
    IF n >= p_max THEN
        RETURN QUERY SELECT 'quota'::text, NULL::uuid, NULL::timestamptz, n;
        RETURN;
    END IF;
    INSERT INTO jobs (id, owner, timeout_s, metadata, backends)
        VALUES (p_job, p_owner, p_timeout, p_metadata,
                (SELECT array_agg(DISTINCT x->>'backend' ORDER BY x->>'backend')
                 FROM jsonb_array_elements(p_executions) x))
        RETURNING jobs.created_at INTO at;
    INSERT INTO executions (id, job_id, position, name, backend, input)
        SELECT (x->>'id')::uuid, p_job, ord - 1, x->>'name', x->>'backend', x->'input'
        FROM jsonb_array_elements(p_executions) WITH ORDINALITY AS t(x, ord);
    INSERT INTO job_events (job_id, kind, actor, detail)
        VALUES (p_job, 'submitted', p_owner,
                jsonb_build_object('executions', jsonb_array_length(p_executions)));
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (owner, key, request_hash, job_id)
            VALUES (p_owner, p_key, p_hash, p_job)
            ON CONFLICT (owner, key) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, job_id = EXCLUDED.job_id, created_at = now();
    END IF;
    PERFORM pg_notify('runner_submit', '');
    RETURN QUERY SELECT 'created'::text, p_job, at, n + 1;
END $$;
