-- Acting on many jobs (issue #29): the concurrency key a job may carry (a new submit with
-- `on_conflict: cancel_running` supersedes the wallet's active jobs with the same key), and
-- the indexes the job filter (runner.filters) needs beyond jobs_owner_idx.

ALTER TABLE jobs ADD COLUMN concurrency_key text;

-- The supersede lookup: a wallet's active jobs with a key (few rows, whatever the history).
CREATE INDEX jobs_active_key_idx ON jobs (owner, concurrency_key)
    WHERE status IN ('queued', 'running') AND concurrency_key IS NOT NULL;

-- `metadata @> $x`: the filter's metadata pairs, for a wallet whose history is too long to
-- walk (jsonb_path_ops: containment only, a third the size of the default operator class).
CREATE INDEX jobs_metadata_idx ON jobs USING gin (metadata jsonb_path_ops);
