-- The schema all migrations produce, generated: `python -m runner.db.schema > migrations/schema.sql`.
-- For reading only. Change the schema with a new numbered migration, then regenerate this file.

-- FUNCTION runner_append_only()

CREATE FUNCTION public.runner_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('runner.retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

-- FUNCTION runner_executions_json(uuid)

CREATE FUNCTION public.runner_executions_json(job uuid) RETURNS json
    LANGUAGE sql STABLE
    AS $$
    SELECT coalesce(json_agg(json_build_object(
        'id', e.id, 'name', e.name, 'backend', e.backend, 'input', e.input, 'status', e.status,
        'remote_id', e.remote_id, 'attempts', e.attempts,
        'started_at', runner_iso(e.started_at), 'finished_at', runner_iso(e.finished_at),
        'output', e.output, 'error', e.error, 'remote_cancel', e.remote_cancel,
        'remote_stopped_at', runner_iso(e.remote_stopped_at), 'gpu_seconds', e.gpu_seconds
    ) ORDER BY e.position), '[]'::json)
    FROM executions e WHERE e.job_id = job
$$;

-- FUNCTION runner_final_status(text[])

CREATE FUNCTION public.runner_final_status(statuses text[]) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN NOT statuses <@ ARRAY['completed', 'failed', 'cancelled'] THEN NULL
        WHEN statuses <@ ARRAY['cancelled'] THEN 'cancelled'
        WHEN 'failed' = ANY (statuses) THEN 'failed'
        ELSE 'completed'
    END
$$;

-- FUNCTION runner_iso(timestamp with time zone)

CREATE FUNCTION public.runner_iso(t timestamp with time zone) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- FUNCTION runner_notify_job(uuid)

CREATE FUNCTION public.runner_notify_job(job uuid) RETURNS void
    LANGUAGE sql
    AS $$
    SELECT pg_notify('runner_job_' || replace(job::text, '-', ''), ''),
           pg_notify('runner_wallet_' || lower(substr(j.owner, 3)), '')
    FROM jobs j WHERE j.id = job
$$;

-- FUNCTION runner_rerun(uuid, uuid, text, boolean, uuid[], text, text, integer)

CREATE FUNCTION public.runner_rerun(p_old uuid, p_new uuid, p_caller text, p_admin boolean, p_named uuid[], p_key text, p_hash text, p_max integer) RETURNS TABLE(outcome text, job uuid, detail text)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    old record;
    prior record;
    n bigint;
    missing uuid;
BEGIN
    SELECT j.id, j.owner, j.status, j.timeout_s, j.metadata, j.backends INTO old FROM jobs j WHERE j.id = p_old;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    IF old.owner <> p_caller AND NOT p_admin THEN
        RETURN QUERY SELECT 'forbidden'::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    IF old.status NOT IN ('cancelled', 'failed') THEN
        RETURN QUERY SELECT 'not_rerunnable'::text, NULL::uuid, old.status;
        RETURN;
    END IF;
    SELECT x INTO missing FROM unnest(coalesce(p_named, '{}')) x
    WHERE NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = x AND e.job_id = p_old) LIMIT 1;
    IF missing IS NOT NULL THEN
        RETURN QUERY SELECT 'unknown_execution'::text, NULL::uuid, missing::text;
        RETURN;
    END IF;
    -- The new job is the old job's wallet's: its lock, its quota, its keys.
    PERFORM pg_advisory_xact_lock(hashtextextended(old.owner, 42));
    IF p_key IS NOT NULL THEN
        SELECT k.job_id, k.request_hash INTO prior FROM idempotency_keys k
        WHERE k.owner = old.owner AND k.key = p_key AND k.created_at > now() - interval '24 hours';
        IF FOUND THEN
            RETURN QUERY SELECT CASE WHEN prior.request_hash = p_hash THEN 'existing' ELSE 'conflict' END,
                                prior.job_id, NULL::text;
            RETURN;
        END IF;
    END IF;
    SELECT count(*) INTO n FROM jobs j WHERE j.owner = old.owner AND j.status IN ('queued', 'running');
    IF n >= p_max THEN
        RETURN QUERY SELECT 'quota'::text, NULL::uuid, n::text;
        RETURN;
    END IF;
    INSERT INTO jobs (id, owner, timeout_s, metadata, backends, rerun_of)
        VALUES (p_new, old.owner, old.timeout_s, old.metadata, old.backends, p_old);
    INSERT INTO executions (id, job_id, position, name, backend, input, status, output, gpu_seconds,
                            started_at, finished_at, attempts)
        SELECT gen_random_uuid(), p_new, e.position, e.name, e.backend, e.input,
               CASE WHEN kept THEN 'completed' ELSE 'queued' END,
               CASE WHEN kept THEN e.output END, CASE WHEN kept THEN e.gpu_seconds END,
               CASE WHEN kept THEN e.started_at END, CASE WHEN kept THEN e.finished_at END,
               CASE WHEN kept THEN e.attempts ELSE 0 END
        FROM executions e,
             LATERAL (SELECT e.status = 'completed' AND NOT (e.id = ANY (coalesce(p_named, '{}'))) AS kept) k
        WHERE e.job_id = p_old;  -- with no names, every execution that did not complete runs again
    INSERT INTO job_events (job_id, kind, actor, detail) VALUES
        (p_old, 'rerun', p_caller, jsonb_build_object('new_job', p_new)),
        (p_new, 'submitted', p_caller, jsonb_build_object(
            'rerun_of', p_old, 'executions', (SELECT count(*) FROM executions WHERE job_id = p_new),
            'kept', (SELECT count(*) FROM executions WHERE job_id = p_new AND status = 'completed')));
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (owner, key, request_hash, job_id)
            VALUES (old.owner, p_key, p_hash, p_new)
            ON CONFLICT (owner, key) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, job_id = EXCLUDED.job_id, created_at = now();
    END IF;
    RETURN QUERY SELECT 'created'::text, p_new, NULL::text;
END $$;

-- FUNCTION runner_rerun_keeps_webhook()

CREATE FUNCTION public.runner_rerun_keeps_webhook() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    SELECT o.webhook, o.webhook_events INTO NEW.webhook, NEW.webhook_events
    FROM jobs o WHERE o.id = NEW.rerun_of;
    RETURN NEW;
END $$;

-- FUNCTION runner_submit(uuid, text, integer, jsonb, jsonb, text, text, integer)

CREATE FUNCTION public.runner_submit(p_job uuid, p_owner text, p_timeout integer, p_metadata jsonb, p_executions jsonb, p_key text, p_hash text, p_max integer) RETURNS TABLE(outcome text, job uuid, created timestamp with time zone, active bigint)
    LANGUAGE plpgsql
    AS $$
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
    INSERT INTO jobs (id, owner, timeout_s, metadata, backends)
        VALUES (p_job, p_owner, p_timeout, p_metadata,
                (SELECT array_agg(DISTINCT x->>'backend' ORDER BY x->>'backend')
                 FROM jsonb_array_elements(p_executions) x))
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
    RETURN QUERY SELECT 'created'::text, p_job, at, n + 1;
END $$;

-- FUNCTION runner_take_slot(uuid, text, integer)

CREATE FUNCTION public.runner_take_slot(p_execution uuid, p_backend text, p_slots integer) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
    in_use bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('runner_slots:' || p_backend, 0));
    SELECT count(*) INTO in_use FROM executions WHERE backend = p_backend AND status = 'running';
    IF in_use >= p_slots THEN
        RETURN CASE WHEN EXISTS (SELECT 1 FROM executions WHERE id = p_execution AND status = 'queued')
                    THEN 'full' ELSE 'gone' END;
    END IF;
    UPDATE executions SET status = 'running', started_at = coalesce(started_at, now())
    WHERE id = p_execution AND status = 'queued';
    IF NOT FOUND THEN
        RETURN 'gone';
    END IF;
    RETURN 'taken';
END $$;

-- FUNCTION runner_terminal_is_final()

CREATE FUNCTION public.runner_terminal_is_final() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF OLD.status IN ('completed', 'failed', 'cancelled') AND NEW.status <> OLD.status THEN
        RAISE EXCEPTION '% % is % and terminal; refusing to make it %',
            TG_TABLE_NAME, OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

-- FUNCTION runner_waiting_reason(text[])

CREATE FUNCTION public.runner_waiting_reason(p_backends text[]) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT 'no live instance has backend ' || quote_literal(b)
           || ' configured: the job runs once one has'
    FROM unnest(p_backends) b
    WHERE NOT EXISTS (SELECT 1 FROM workers w
                      WHERE w.lease_expires_at >= now() AND b = ANY(w.backends))
    ORDER BY b LIMIT 1
$$;

-- FUNCTION runner_webhook_job_event()

CREATE FUNCTION public.runner_webhook_job_event() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    ev text := CASE NEW.status WHEN 'running' THEN 'started' ELSE NEW.status END;
BEGIN
    IF ev = ANY (NEW.webhook_events) THEN
        INSERT INTO webhook_outbox (job_id, event, url) VALUES (NEW.id, ev, NEW.webhook);
        PERFORM pg_notify('runner_webhook', '');
    END IF;
    RETURN NULL;
END $$;

-- FUNCTION runner_webhook_remote_stopped()

CREATE FUNCTION public.runner_webhook_remote_stopped() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO webhook_outbox (job_id, execution_id, event, url)
    SELECT j.id, NEW.id, 'remote_stopped', j.webhook FROM jobs j
    WHERE j.id = NEW.job_id AND j.webhook IS NOT NULL AND 'remote_stopped' = ANY (j.webhook_events);
    IF FOUND THEN
        PERFORM pg_notify('runner_webhook', '');
    END IF;
    RETURN NULL;
END $$;

-- TABLE auth_nonces

CREATE TABLE public.auth_nonces (
    nonce text NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

-- TABLE auth_tickets

CREATE TABLE public.auth_tickets (
    ticket_hash bytea NOT NULL,
    token_hash bytea NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

-- TABLE cancel_pacing

CREATE TABLE public.cancel_pacing (
    backend text NOT NULL,
    next_at timestamp with time zone NOT NULL
);

-- TABLE executions

CREATE TABLE public.executions (
    id uuid NOT NULL,
    job_id uuid NOT NULL,
    "position" integer NOT NULL,
    name text,
    backend text NOT NULL,
    input jsonb NOT NULL,
    status text DEFAULT 'queued'::text NOT NULL,
    remote_id text,
    attempts integer DEFAULT 0 NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    output jsonb,
    error text,
    remote_cancel text,
    remote_cancel_error text,
    remote_cancel_tries integer DEFAULT 0 NOT NULL,
    remote_cancel_due timestamp with time zone,
    remote_cancel_acknowledged_at timestamp with time zone,
    remote_stopped_at timestamp with time zone,
    gpu_seconds double precision,
    remote_urls jsonb,
    CONSTRAINT executions_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT executions_gpu_seconds_check CHECK ((gpu_seconds >= (0)::double precision)),
    CONSTRAINT executions_remote_cancel_check CHECK ((remote_cancel = ANY (ARRAY['pending'::text, 'acknowledged'::text, 'confirmed'::text, 'failed'::text, 'gone'::text]))),
    CONSTRAINT executions_remote_urls_check CHECK (((remote_urls IS NULL) OR (jsonb_typeof(remote_urls) = 'object'::text))),
    CONSTRAINT executions_status_check CHECK ((status = ANY (ARRAY['queued'::text, 'running'::text, 'completed'::text, 'failed'::text, 'cancelled'::text])))
);

-- TABLE fleet_gauges

CREATE UNLOGGED TABLE public.fleet_gauges (
    one boolean DEFAULT true NOT NULL,
    figures jsonb NOT NULL,
    counted_at timestamp with time zone NOT NULL,
    CONSTRAINT fleet_gauges_one_check CHECK (one)
);

-- TABLE idempotency_keys

CREATE TABLE public.idempotency_keys (
    owner text NOT NULL,
    key text NOT NULL,
    request_hash text NOT NULL,
    job_id uuid NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

-- TABLE job_events

CREATE TABLE public.job_events (
    id bigint NOT NULL,
    job_id uuid NOT NULL,
    execution_id uuid,
    at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    kind text NOT NULL,
    actor text NOT NULL,
    detail jsonb DEFAULT '{}'::jsonb NOT NULL
);

-- SEQUENCE job_events_id_seq

ALTER TABLE public.job_events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.job_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

-- TABLE jobs

CREATE TABLE public.jobs (
    id uuid NOT NULL,
    owner text NOT NULL,
    status text DEFAULT 'queued'::text NOT NULL,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    cancelled_at timestamp with time zone,
    cancelled_by text,
    cancel_reason text,
    timeout_s integer,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    error text,
    attempts integer DEFAULT 0 NOT NULL,
    worker_id text,
    backends text[] DEFAULT '{}'::text[] NOT NULL,
    rerun_of uuid,
    webhook text,
    webhook_events text[],
    concurrency_key text,
    CONSTRAINT jobs_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT jobs_cancel_reason_check CHECK ((char_length(cancel_reason) <= 500)),
    CONSTRAINT jobs_check1 CHECK (((status = 'cancelled'::text) = (cancelled_at IS NOT NULL))),
    CONSTRAINT jobs_running_has_worker CHECK (((status = 'running'::text) = (worker_id IS NOT NULL))),
    CONSTRAINT jobs_status_check CHECK ((status = ANY (ARRAY['queued'::text, 'running'::text, 'completed'::text, 'failed'::text, 'cancelled'::text]))),
    CONSTRAINT jobs_timeout_s_check CHECK (((timeout_s >= 1) AND (timeout_s <= 86400))),
    CONSTRAINT jobs_webhook_check CHECK ((char_length(webhook) <= 2048))
);

-- TABLE schema_migrations

CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

-- TABLE sessions

CREATE TABLE public.sessions (
    token_hash bytea NOT NULL,
    address text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    revoked_at timestamp with time zone
);

-- TABLE wallet_turns

CREATE TABLE public.wallet_turns (
    owner text NOT NULL,
    last_claimed_at timestamp with time zone NOT NULL
);

-- TABLE watched

CREATE UNLOGGED TABLE public.watched (
    key text NOT NULL,
    until timestamp with time zone NOT NULL
);

-- TABLE webhook_outbox

CREATE TABLE public.webhook_outbox (
    id bigint NOT NULL,
    msg_id text DEFAULT ('msg_'::text || replace((gen_random_uuid())::text, '-'::text, ''::text)) NOT NULL,
    job_id uuid NOT NULL,
    execution_id uuid,
    event text NOT NULL,
    url text NOT NULL,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    payload text,
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    state text DEFAULT 'pending'::text NOT NULL,
    finished_at timestamp with time zone,
    CONSTRAINT webhook_outbox_event_check CHECK ((event = ANY (ARRAY['started'::text, 'completed'::text, 'failed'::text, 'cancelled'::text, 'remote_stopped'::text]))),
    CONSTRAINT webhook_outbox_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'delivered'::text, 'failed'::text])))
);

-- SEQUENCE webhook_outbox_id_seq

ALTER TABLE public.webhook_outbox ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.webhook_outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

-- TABLE webhook_secrets

CREATE TABLE public.webhook_secrets (
    owner text NOT NULL,
    secret text NOT NULL,
    previous text,
    previous_until timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

-- TABLE workers

CREATE TABLE public.workers (
    id text NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    lease_expires_at timestamp with time zone NOT NULL,
    backends text[] DEFAULT '{}'::text[] NOT NULL
);

-- CONSTRAINT auth_nonces auth_nonces_pkey

ALTER TABLE ONLY public.auth_nonces
    ADD CONSTRAINT auth_nonces_pkey PRIMARY KEY (nonce);

-- CONSTRAINT auth_tickets auth_tickets_pkey

ALTER TABLE ONLY public.auth_tickets
    ADD CONSTRAINT auth_tickets_pkey PRIMARY KEY (ticket_hash);

-- CONSTRAINT cancel_pacing cancel_pacing_pkey

ALTER TABLE ONLY public.cancel_pacing
    ADD CONSTRAINT cancel_pacing_pkey PRIMARY KEY (backend);

-- CONSTRAINT executions executions_job_id_position_key

ALTER TABLE ONLY public.executions
    ADD CONSTRAINT executions_job_id_position_key UNIQUE (job_id, "position");

-- CONSTRAINT executions executions_pkey

ALTER TABLE ONLY public.executions
    ADD CONSTRAINT executions_pkey PRIMARY KEY (id);

-- CONSTRAINT fleet_gauges fleet_gauges_pkey

ALTER TABLE ONLY public.fleet_gauges
    ADD CONSTRAINT fleet_gauges_pkey PRIMARY KEY (one);

-- CONSTRAINT idempotency_keys idempotency_keys_pkey

ALTER TABLE ONLY public.idempotency_keys
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (owner, key);

-- CONSTRAINT job_events job_events_pkey

ALTER TABLE ONLY public.job_events
    ADD CONSTRAINT job_events_pkey PRIMARY KEY (id);

-- CONSTRAINT jobs jobs_pkey

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);

-- CONSTRAINT schema_migrations schema_migrations_pkey

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

-- CONSTRAINT sessions sessions_pkey

ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (token_hash);

-- CONSTRAINT wallet_turns wallet_turns_pkey

ALTER TABLE ONLY public.wallet_turns
    ADD CONSTRAINT wallet_turns_pkey PRIMARY KEY (owner);

-- CONSTRAINT watched watched_pkey

ALTER TABLE ONLY public.watched
    ADD CONSTRAINT watched_pkey PRIMARY KEY (key);

-- CONSTRAINT webhook_outbox webhook_outbox_msg_id_key

ALTER TABLE ONLY public.webhook_outbox
    ADD CONSTRAINT webhook_outbox_msg_id_key UNIQUE (msg_id);

-- CONSTRAINT webhook_outbox webhook_outbox_pkey

ALTER TABLE ONLY public.webhook_outbox
    ADD CONSTRAINT webhook_outbox_pkey PRIMARY KEY (id);

-- CONSTRAINT webhook_secrets webhook_secrets_pkey

ALTER TABLE ONLY public.webhook_secrets
    ADD CONSTRAINT webhook_secrets_pkey PRIMARY KEY (owner);

-- CONSTRAINT workers workers_pkey

ALTER TABLE ONLY public.workers
    ADD CONSTRAINT workers_pkey PRIMARY KEY (id);

-- INDEX auth_nonces_expiry_idx

CREATE INDEX auth_nonces_expiry_idx ON public.auth_nonces USING btree (expires_at);

-- INDEX executions_remote_cancel_idx

CREATE INDEX executions_remote_cancel_idx ON public.executions USING btree (remote_cancel_due) WHERE (remote_cancel = 'pending'::text);

-- INDEX executions_running_backend_idx

CREATE INDEX executions_running_backend_idx ON public.executions USING btree (backend) WHERE (status = 'running'::text);

-- INDEX executions_unconfirmed_idx

CREATE INDEX executions_unconfirmed_idx ON public.executions USING btree (remote_cancel_due) WHERE (remote_cancel = 'acknowledged'::text);

-- INDEX job_events_job_idx

CREATE INDEX job_events_job_idx ON public.job_events USING btree (job_id, id);

-- INDEX jobs_active_key_idx

CREATE INDEX jobs_active_key_idx ON public.jobs USING btree (owner, concurrency_key) WHERE ((status = ANY (ARRAY['queued'::text, 'running'::text])) AND (concurrency_key IS NOT NULL));

-- INDEX jobs_finished_idx

CREATE INDEX jobs_finished_idx ON public.jobs USING btree (finished_at) WHERE (status = ANY (ARRAY['completed'::text, 'failed'::text, 'cancelled'::text]));

-- INDEX jobs_owned_metadata_idx

CREATE INDEX jobs_owned_metadata_idx ON public.jobs USING gin (jsonb_set('{}'::jsonb, ARRAY[owner], metadata) jsonb_path_ops);

-- INDEX jobs_owner_active_idx

CREATE INDEX jobs_owner_active_idx ON public.jobs USING btree (owner) WHERE (status = ANY (ARRAY['queued'::text, 'running'::text]));

-- INDEX jobs_owner_idx

CREATE INDEX jobs_owner_idx ON public.jobs USING btree (owner, created_at DESC, id DESC);

-- INDEX jobs_queued_idx

CREATE INDEX jobs_queued_idx ON public.jobs USING btree (created_at, id) WHERE (status = 'queued'::text);

-- INDEX jobs_queued_owner_idx

CREATE INDEX jobs_queued_owner_idx ON public.jobs USING btree (owner, created_at, id) WHERE (status = 'queued'::text);

-- INDEX jobs_worker_idx

CREATE INDEX jobs_worker_idx ON public.jobs USING btree (worker_id) WHERE (status = 'running'::text);

-- INDEX sessions_expiry_idx

CREATE INDEX sessions_expiry_idx ON public.sessions USING btree (expires_at);

-- INDEX webhook_outbox_due_idx

CREATE INDEX webhook_outbox_due_idx ON public.webhook_outbox USING btree (next_attempt_at) WHERE (state = 'pending'::text);

-- INDEX webhook_outbox_job_idx

CREATE INDEX webhook_outbox_job_idx ON public.webhook_outbox USING btree (job_id, id) WHERE (state = 'pending'::text);

-- INDEX workers_lease_idx

CREATE INDEX workers_lease_idx ON public.workers USING btree (lease_expires_at);

-- TRIGGER executions executions_terminal_is_final

CREATE TRIGGER executions_terminal_is_final BEFORE UPDATE OF status ON public.executions FOR EACH ROW WHEN (((old.status = ANY (ARRAY['completed'::text, 'failed'::text, 'cancelled'::text])) AND (old.status IS DISTINCT FROM new.status))) EXECUTE FUNCTION public.runner_terminal_is_final();

-- TRIGGER executions executions_webhook

CREATE TRIGGER executions_webhook AFTER UPDATE OF remote_cancel ON public.executions FOR EACH ROW WHEN (((new.remote_cancel = 'confirmed'::text) AND (old.remote_cancel IS DISTINCT FROM 'confirmed'::text))) EXECUTE FUNCTION public.runner_webhook_remote_stopped();

-- TRIGGER job_events job_events_append_only

CREATE TRIGGER job_events_append_only BEFORE DELETE OR UPDATE ON public.job_events FOR EACH ROW EXECUTE FUNCTION public.runner_append_only();

-- TRIGGER job_events job_events_no_truncate

CREATE TRIGGER job_events_no_truncate BEFORE TRUNCATE ON public.job_events FOR EACH STATEMENT EXECUTE FUNCTION public.runner_append_only();

-- TRIGGER jobs jobs_rerun_keeps_webhook

CREATE TRIGGER jobs_rerun_keeps_webhook BEFORE INSERT ON public.jobs FOR EACH ROW WHEN (((new.rerun_of IS NOT NULL) AND (new.webhook IS NULL))) EXECUTE FUNCTION public.runner_rerun_keeps_webhook();

-- TRIGGER jobs jobs_terminal_is_final

CREATE TRIGGER jobs_terminal_is_final BEFORE UPDATE OF status ON public.jobs FOR EACH ROW WHEN (((old.status = ANY (ARRAY['completed'::text, 'failed'::text, 'cancelled'::text])) AND (old.status IS DISTINCT FROM new.status))) EXECUTE FUNCTION public.runner_terminal_is_final();

-- TRIGGER jobs jobs_webhook

CREATE TRIGGER jobs_webhook AFTER UPDATE OF status ON public.jobs FOR EACH ROW WHEN (((new.webhook IS NOT NULL) AND (new.status IS DISTINCT FROM old.status) AND (new.status <> 'queued'::text))) EXECUTE FUNCTION public.runner_webhook_job_event();

-- FK CONSTRAINT auth_tickets auth_tickets_token_hash_fkey

ALTER TABLE ONLY public.auth_tickets
    ADD CONSTRAINT auth_tickets_token_hash_fkey FOREIGN KEY (token_hash) REFERENCES public.sessions(token_hash) ON DELETE CASCADE;

-- FK CONSTRAINT executions executions_job_id_fkey

ALTER TABLE ONLY public.executions
    ADD CONSTRAINT executions_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(id);

-- FK CONSTRAINT idempotency_keys idempotency_keys_job_id_fkey

ALTER TABLE ONLY public.idempotency_keys
    ADD CONSTRAINT idempotency_keys_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(id);

-- FK CONSTRAINT job_events job_events_job_id_fkey

ALTER TABLE ONLY public.job_events
    ADD CONSTRAINT job_events_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(id);

-- FK CONSTRAINT jobs jobs_rerun_of_fkey

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_rerun_of_fkey FOREIGN KEY (rerun_of) REFERENCES public.jobs(id) ON DELETE SET NULL;

-- FK CONSTRAINT webhook_outbox webhook_outbox_job_id_fkey

ALTER TABLE ONLY public.webhook_outbox
    ADD CONSTRAINT webhook_outbox_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(id) ON DELETE CASCADE;
