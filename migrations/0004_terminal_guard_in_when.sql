-- The terminal-is-final guard, unchanged in effect, cheaper: the whole condition now sits in
-- the trigger's WHEN clause (evaluated without calling PL/pgSQL), so the function runs only
-- for a write that would leave a terminal status -- never on the claims, results and
-- cancels of normal operation.

DROP TRIGGER jobs_terminal_is_final ON jobs;
DROP TRIGGER executions_terminal_is_final ON executions;

CREATE TRIGGER jobs_terminal_is_final BEFORE UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IN ('completed', 'failed', 'cancelled')
                       AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION runner_terminal_is_final();
CREATE TRIGGER executions_terminal_is_final BEFORE UPDATE OF status ON executions
    FOR EACH ROW WHEN (OLD.status IN ('completed', 'failed', 'cancelled')
                       AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION runner_terminal_is_final();
