-- A job's final status from its executions' statuses, written once for every statement
-- that finishes a job: NULL while any execution is open; otherwise `cancelled` if all were
-- cancelled, `failed` if any failed, `completed` else. A plain SQL expression: the planner
-- inlines it.
CREATE FUNCTION runner_final_status(statuses text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN NOT statuses <@ ARRAY['completed', 'failed', 'cancelled'] THEN NULL
        WHEN statuses <@ ARRAY['cancelled'] THEN 'cancelled'
        WHEN 'failed' = ANY (statuses) THEN 'failed'
        ELSE 'completed'
    END
$$;
