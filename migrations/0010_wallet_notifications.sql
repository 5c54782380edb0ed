-- A job changed: wake whoever watches it, and whoever watches its wallet's jobs (GET /events).
CREATE OR REPLACE FUNCTION runner_notify_job(job uuid) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('runner_job_' || replace(job::text, '-', ''), ''),
           pg_notify('runner_wallet_' || lower(substr(j.owner, 3)), '')
    FROM jobs j WHERE j.id = job
$$;
