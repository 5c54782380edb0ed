-- Submitting a job in one round trip. The per-wallet lock keeps the quota and the
-- Idempotency-Key exact under concurrent submits; inside a VOLATILE function each
-- statement takes a fresh snapshot (READ COMMITTED), so it sees what the previous lock
-- holder committed. The lock is held until this statement's transaction commits.

CREATE FUNCTION runner_submit(
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
    INSERT INTO jobs (id, owner, timeout_s, metadata) VALUES (p_job, p_owner, p_timeout, p_metadata)
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
