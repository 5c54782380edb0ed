-- The providers as they really behave.
-- `gone`: the provider no longer knows the work (404 / NOT_FOUND: its record expired), so a
-- cancel owed to it can neither be sent nor confirmed.
ALTER TABLE executions DROP CONSTRAINT executions_remote_cancel_check;
ALTER TABLE executions ADD CONSTRAINT executions_remote_cancel_check
    CHECK (remote_cancel IN ('pending', 'acknowledged', 'confirmed', 'failed', 'gone'));
-- The URLs a provider returned for the work (fal's status/response/cancel, Modal's result
-- URL), kept with the remote id: fal says never to build them.
ALTER TABLE executions ADD COLUMN remote_urls jsonb
    CHECK (remote_urls IS NULL OR jsonb_typeof(remote_urls) = 'object');
-- Remote cancels to one backend, paced across every instance: the next free send time per
-- backend, taken and moved on in one statement (a provider's limit is per endpoint).
CREATE TABLE cancel_pacing (
    backend text PRIMARY KEY,
    next_at timestamptz NOT NULL
);
