-- Re-run a cancelled or failed job, keeping what completed.
ALTER TABLE jobs ADD COLUMN rerun_of uuid REFERENCES jobs (id) ON DELETE SET NULL;

-- One statement, like submit: checks, quota and Idempotency-Key under the wallet's lock; a
-- new job with one execution per old one, in order -- a completed one not named is copied
-- completed (its output and GPU-seconds kept, never sent again), the others start queued
-- with no remote id; an event on each job. Outcomes: created, existing, conflict, quota,
-- not_found, forbidden, not_rerunnable (status), unknown_execution (the id).
CREATE FUNCTION runner_rerun(
    p_old uuid, p_new uuid, p_caller text, p_admin boolean, p_named uuid[],
    p_key text, p_hash text, p_max integer)
RETURNS TABLE (outcome text, job uuid, detail text)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    old record;
    prior record;
    n bigint;
    missing uuid;
BEGIN
    SELECT j.id, j.owner, j.status, j.timeout_s, j.metadata, j.backends INTO old FROM jobs j WHERE j.id = p_old;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    IF old.owner <> p_caller AND NOT p_admin THEN
        RETURN QUERY SELECT 'forbidden'::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    IF old.status NOT IN ('cancelled', 'failed') THEN
        RETURN QUERY SELECT 'not_rerunnable'::text, NULL::uuid, old.status;
        RETURN;
    END IF;
    SELECT x INTO missing FROM unnest(coalesce(p_named, '{}')) x
    WHERE NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = x AND e.job_id = p_old) LIMIT 1;
    IF missing IS NOT NULL THEN
        RETURN QUERY SELECT 'unknown_execution'::text, NULL::uuid, missing::text;
        RETURN;
    END IF;
    -- The new job is the old job's wallet's: its lock, its quota, its keys.
    PERFORM pg_advisory_xact_lock(hashtextextended(old.owner, 42));
    IF p_key IS NOT NULL THEN
        SELECT k.job_id, k.request_hash INTO prior FROM idempotency_keys k
        WHERE k.owner = old.owner AND k.key = p_key AND k.created_at > now() - interval '24 hours';
        IF FOUND THEN
            RETURN QUERY SELECT CASE WHEN prior.request_hash = p_hash THEN 'existing' ELSE 'conflict' END,
                                prior.job_id, NULL::text;
            RETURN;
        END IF;
    END IF;
    SELECT count(*) INTO n FROM jobs j WHERE j.owner = old.owner AND j.status IN ('queued', 'running');
    IF n >= p_max THEN
        RETURN QUERY SELECT 'quota'::text, NULL::uuid, n::text;
        RETURN;
    END IF;
    INSERT INTO jobs (id, owner, timeout_s, metadata, backends, rerun_of)
        VALUES (p_new, old.owner, old.timeout_s, old.metadata, old.backends, p_old);
    INSERT INTO executions (id, job_id, position, name, backend, input, status, output, gpu_seconds,
                            started_at, finished_at, attempts)
        SELECT gen_random_uuid(), p_new, e.position, e.name, e.backend, e.input,
               CASE WHEN kept THEN 'completed' ELSE 'queued' END,
               CASE WHEN kept THEN e.output END, CASE WHEN kept THEN e.gpu_seconds END,
               CASE WHEN kept THEN e.started_at END, CASE WHEN kept THEN e.finished_at END,
               CASE WHEN kept THEN e.attempts ELSE 0 END
        FROM executions e,
             LATERAL (SELECT e.status = 'completed' AND NOT (e.id = ANY (coalesce(p_named, '{}'))) AS kept) k
        WHERE e.job_id = p_old;  -- with no names, every execution that did not complete runs again
    INSERT INTO job_events (job_id, kind, actor, detail) VALUES
        (p_old, 'rerun', p_caller, jsonb_build_object('new_job', p_new)),
        (p_new, 'submitted', p_caller, jsonb_build_object(
            'rerun_of', p_old, 'executions', (SELECT count(*) FROM executions WHERE job_id = p_new),
            'kept', (SELECT count(*) FROM executions WHERE job_id = p_new AND status = 'completed')));
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (owner, key, request_hash, job_id)
            VALUES (old.owner, p_key, p_hash, p_new)
            ON CONFLICT (owner, key) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, job_id = EXCLUDED.job_id, created_at = now();
    END IF;
    PERFORM pg_notify('runner_submit', '');
    RETURN QUERY SELECT 'created'::text, p_new, NULL::text;
END $$;
