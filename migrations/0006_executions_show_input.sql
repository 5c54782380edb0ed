-- A job's executions, as the API shows them, now with the input each was given.
CREATE OR REPLACE FUNCTION runner_executions_json(job uuid) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT coalesce(json_agg(json_build_object(
        'id', e.id, 'name', e.name, 'backend', e.backend, 'input', e.input, 'status', e.status,
        'remote_id', e.remote_id, 'attempts', e.attempts,
        'started_at', runner_iso(e.started_at), 'finished_at', runner_iso(e.finished_at),
        'output', e.output, 'error', e.error, 'remote_cancel', e.remote_cancel
    ) ORDER BY e.position), '[]'::json)
    FROM executions e WHERE e.job_id = job
$$;
