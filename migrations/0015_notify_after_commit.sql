-- Notifications after the commit (runner.db.notify): a transaction that changes rows no
-- longer NOTIFYs, so it is not serialised behind Postgres' notify lock across its WAL flush.
-- These functions lose their NOTIFYs; their callers hand the hints to the instance's
-- Notifier, which sends them coalesced, in transactions of their own. runner_notify_job
-- stays (instances of the previous release call it during a rolling deploy).

CREATE OR REPLACE FUNCTION runner_take_slot(p_execution uuid, p_backend text, p_slots integer)
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
    RETURN 'taken';
END $$;

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
    RETURN QUERY SELECT 'created'::text, p_job, at, n + 1;
END $$;

CREATE OR REPLACE FUNCTION runner_rerun(
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
    RETURN QUERY SELECT 'created'::text, p_new, NULL::text;
END $$;
