-- The whole schema of SPEC §3-§4: jobs, executions, the audit trail, sign-in state.

CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    owner             text        NOT NULL,
    status            text        NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at        timestamptz,
    finished_at       timestamptz,
    cancelled_at      timestamptz,
    cancelled_by      text,
    cancel_reason     text CHECK (char_length(cancel_reason) <= 500),
    timeout_s         integer CHECK (timeout_s BETWEEN 1 AND 86400),
    metadata          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error             text,
    attempts          integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- The instance holding a running job, and until when (SPEC §8).
    worker_id         text,
    lease_expires_at  timestamptz,
    CHECK ((status = 'running') = (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL))
);

-- Claiming: oldest queued first.
CREATE INDEX jobs_queued_idx ON jobs (created_at, id) WHERE status = 'queued';
-- Requeueing: running jobs whose lease expired.
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE status = 'running';
-- A wallet's jobs, newest first (keyset pagination), and its active-job quota.
CREATE INDEX jobs_owner_idx ON jobs (owner, created_at DESC, id DESC);
CREATE INDEX jobs_owner_active_idx ON jobs (owner) WHERE status IN ('queued', 'running');

CREATE TABLE executions (
    id                  uuid PRIMARY KEY,
    job_id              uuid        NOT NULL REFERENCES jobs (id),
    position            integer     NOT NULL,
    name                text,
    backend             text        NOT NULL,
    input               jsonb       NOT NULL,
    status              text        NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    remote_id           text,
    attempts            integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    started_at          timestamptz,
    finished_at         timestamptz,
    output              jsonb,
    error               text,
    -- A cancel owed to the backend (SPEC §3): NULL, pending, acknowledged, failed.
    remote_cancel       text CHECK (remote_cancel IN ('pending', 'acknowledged', 'failed')),
    remote_cancel_error text,
    remote_cancel_tries integer     NOT NULL DEFAULT 0,
    remote_cancel_due   timestamptz,
    UNIQUE (job_id, position)
);

CREATE INDEX executions_remote_cancel_idx ON executions (remote_cancel_due)
    WHERE remote_cancel = 'pending';

-- Terminal is final, whatever the statement: a second line of defence behind the
-- conditional writes (`WHERE status IN (...)`) that every status write carries.
CREATE FUNCTION runner_terminal_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('completed', 'failed', 'cancelled') AND NEW.status <> OLD.status THEN
        RAISE EXCEPTION '% % is % and terminal; refusing to make it %',
            TG_TABLE_NAME, OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_terminal_is_final BEFORE UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION runner_terminal_is_final();
CREATE TRIGGER executions_terminal_is_final BEFORE UPDATE OF status ON executions
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION runner_terminal_is_final();

-- The audit trail: append-only (who, what, when, why).
CREATE TABLE job_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id        uuid        NOT NULL REFERENCES jobs (id),
    execution_id  uuid,
    at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind          text        NOT NULL,
    actor         text        NOT NULL,
    detail        jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX job_events_job_idx ON job_events (job_id, id);

CREATE FUNCTION runner_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER job_events_append_only BEFORE UPDATE OR DELETE ON job_events
    FOR EACH ROW EXECUTE FUNCTION runner_append_only();
CREATE TRIGGER job_events_no_truncate BEFORE TRUNCATE ON job_events
    FOR EACH STATEMENT EXECUTE FUNCTION runner_append_only();

-- Idempotency-Key, per wallet, 24 h (SPEC §5).
CREATE TABLE idempotency_keys (
    owner         text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    job_id        uuid        NOT NULL REFERENCES jobs (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);

-- Sign-in (SPEC §4): nonces are single-use; tokens and tickets are stored only as hashes.
CREATE TABLE auth_nonces (
    nonce       text PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX auth_nonces_expiry_idx ON auth_nonces (expires_at);

CREATE TABLE sessions (
    token_hash  bytea PRIMARY KEY,
    address     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX sessions_expiry_idx ON sessions (expires_at);

CREATE TABLE auth_tickets (
    ticket_hash  bytea PRIMARY KEY,
    token_hash   bytea       NOT NULL REFERENCES sessions (token_hash) ON DELETE CASCADE,
    expires_at   timestamptz NOT NULL
);

-- Times in replies: ISO 8601 UTC ending in Z, millisecond precision (SPEC §3).
CREATE FUNCTION runner_iso(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- One job with its executions, as the API shows it.
CREATE FUNCTION runner_executions_json(job uuid) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT coalesce(json_agg(json_build_object(
        'id', e.id, 'name', e.name, 'backend', e.backend, 'status', e.status,
        'remote_id', e.remote_id, 'attempts', e.attempts,
        'started_at', runner_iso(e.started_at), 'finished_at', runner_iso(e.finished_at),
        'output', e.output, 'error', e.error, 'remote_cancel', e.remote_cancel
    ) ORDER BY e.position), '[]'::json)
    FROM executions e WHERE e.job_id = job
$$;

-- A job changed: wake whoever watches it (SSE, `?wait=true`). One channel per job, so
-- only the sessions LISTENing for that job receive it (SPEC §7: NOTIFY is a hint).
CREATE FUNCTION runner_notify_job(job uuid) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('runner_job_' || replace(job::text, '-', ''), '')
$$;
