-- Why a queued job waits, when it waits for something an operator must fix: a backend that
-- no live instance has configured. NULL otherwise (it waits its turn, or a backend's slot).
CREATE OR REPLACE FUNCTION runner_waiting_reason(p_backends text[]) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT 'no live instance has backend ' || quote_literal(b)
           || ' configured: the job runs once one has'
    FROM unnest(p_backends) b
    WHERE NOT EXISTS (SELECT 1 FROM workers w
                      WHERE w.lease_expires_at >= now() AND b = ANY(w.backends))
    ORDER BY b LIMIT 1
$$;
