-- Acting on many jobs (issue #29): the concurrency key a job may carry (a new submit with
-- `on_conflict: cancel_running` supersedes the wallet's active jobs with the same key), and
-- the indexes the job filter (runner.filters) needs beyond jobs_owner_idx.

ALTER TABLE jobs ADD COLUMN concurrency_key text;

-- The supersede lookup: a wallet's active jobs with a key (few rows, whatever the history).
CREATE INDEX jobs_active_key_idx ON jobs (owner, concurrency_key)
    WHERE status IN ('queued', 'running') AND concurrency_key IS NOT NULL;

-- The filter's metadata pairs (runner.filters), under the owner: jsonb_path_ops hashes each
-- value with the keys leading to it, so an entry (wallet, key, value) lists only that
-- wallet's jobs. A plain index on metadata made a wallet's filtered page read every other
-- wallet's jobs with the same pair (2x slower with a million jobs of others' history).
-- jsonb_set, not jsonb_build_object: an index expression must be immutable.
CREATE INDEX jobs_owned_metadata_idx ON jobs
    USING gin (jsonb_set('{}', ARRAY[owner], metadata) jsonb_path_ops);
