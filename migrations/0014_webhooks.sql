-- Webhooks (README, Webhooks): a job's URL is POSTed each event it asked for. Events are written by
-- triggers in the same transaction as the change they report (an outbox), so no status
-- statement elsewhere needs to know about them and none can commit without its event.

ALTER TABLE jobs
    ADD COLUMN webhook text CHECK (char_length(webhook) <= 2048),
    ADD COLUMN webhook_events text[];

-- A re-run keeps its original's webhook (runner_rerun is left as it is).
CREATE FUNCTION runner_rerun_keeps_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT o.webhook, o.webhook_events INTO NEW.webhook, NEW.webhook_events
    FROM jobs o WHERE o.id = NEW.rerun_of;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_rerun_keeps_webhook BEFORE INSERT ON jobs FOR EACH ROW
    WHEN (NEW.rerun_of IS NOT NULL AND NEW.webhook IS NULL)
    EXECUTE FUNCTION runner_rerun_keeps_webhook();

-- One signing secret per wallet; a rotated one stays valid (is signed with too) until
-- previous_until.
CREATE TABLE webhook_secrets (
    owner           text PRIMARY KEY,
    secret          text        NOT NULL,
    previous        text,
    previous_until  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- webhook-id: the same on every attempt, so a receiver can drop a repeat.
    msg_id           text        NOT NULL UNIQUE DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
    job_id           uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    execution_id     uuid,
    event            text        NOT NULL
        CHECK (event IN ('started', 'completed', 'failed', 'cancelled', 'remote_stopped')),
    url              text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The body, fixed at the first attempt so that every retry sends the same bytes.
    payload          text,
    attempts         integer     NOT NULL DEFAULT 0,
    -- When it may be tried next; a claim pushes it past the attempt's timeout, so the row
    -- of an instance killed mid-delivery comes due again by itself.
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    state            text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed')),
    finished_at      timestamptz
);
CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_outbox_job_idx ON webhook_outbox (job_id, id) WHERE state = 'pending';

CREATE FUNCTION runner_webhook_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev text := CASE NEW.status WHEN 'running' THEN 'started' ELSE NEW.status END;
BEGIN
    IF ev = ANY (NEW.webhook_events) THEN
        INSERT INTO webhook_outbox (job_id, event, url) VALUES (NEW.id, ev, NEW.webhook);
        PERFORM pg_notify('runner_webhook', '');
    END IF;
    RETURN NULL;
END $$;

-- queued is no event: a job is requeued when its worker's lease is lost.
CREATE TRIGGER jobs_webhook AFTER UPDATE OF status ON jobs FOR EACH ROW
    WHEN (NEW.webhook IS NOT NULL AND NEW.status IS DISTINCT FROM OLD.status AND NEW.status <> 'queued')
    EXECUTE FUNCTION runner_webhook_job_event();

CREATE FUNCTION runner_webhook_remote_stopped() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_outbox (job_id, execution_id, event, url)
    SELECT j.id, NEW.id, 'remote_stopped', j.webhook FROM jobs j
    WHERE j.id = NEW.job_id AND j.webhook IS NOT NULL AND 'remote_stopped' = ANY (j.webhook_events);
    IF FOUND THEN
        PERFORM pg_notify('runner_webhook', '');
    END IF;
    RETURN NULL;
END $$;

-- remote_stopped: the provider has reported the cancelled work over.
CREATE TRIGGER executions_webhook AFTER UPDATE OF remote_cancel ON executions FOR EACH ROW
    WHEN (NEW.remote_cancel = 'confirmed' AND OLD.remote_cancel IS DISTINCT FROM 'confirmed')
    EXECUTE FUNCTION runner_webhook_remote_stopped();
