-- Proven stop and spend: a remote cancel is `confirmed` once the provider reports the work
-- over (remote_stopped_at); every execution's GPU-seconds.
ALTER TABLE executions DROP CONSTRAINT executions_remote_cancel_check;
ALTER TABLE executions ADD CONSTRAINT executions_remote_cancel_check
    CHECK (remote_cancel IN ('pending', 'acknowledged', 'confirmed', 'failed'));
ALTER TABLE executions ADD COLUMN remote_cancel_acknowledged_at timestamptz;
ALTER TABLE executions ADD COLUMN remote_stopped_at timestamptz;
ALTER TABLE executions ADD COLUMN gpu_seconds double precision CHECK (gpu_seconds >= 0);
-- Acknowledged cancels whose work is still to be seen over: the sweeper polls them when due.
CREATE INDEX executions_unconfirmed_idx ON executions (remote_cancel_due) WHERE remote_cancel = 'acknowledged';

CREATE OR REPLACE FUNCTION runner_executions_json(job uuid) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT coalesce(json_agg(json_build_object(
        'id', e.id, 'name', e.name, 'backend', e.backend, 'input', e.input, 'status', e.status,
        'remote_id', e.remote_id, 'attempts', e.attempts,
        'started_at', runner_iso(e.started_at), 'finished_at', runner_iso(e.finished_at),
        'output', e.output, 'error', e.error, 'remote_cancel', e.remote_cancel,
        'remote_stopped_at', runner_iso(e.remote_stopped_at), 'gpu_seconds', e.gpu_seconds
    ) ORDER BY e.position), '[]'::json)
    FROM executions e WHERE e.job_id = job
$$;
