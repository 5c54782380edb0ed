-- Leases per worker instead of per job. Renewing a per-job lease rewrote every held job
-- every RUNNER_LEASE_S/3 (17 ms of row locks for 1,000 jobs, 200 ms for 10,000), and a
-- cancel landing meanwhile waited for those locks. Now a worker renews one row, and a
-- running job's lease is its worker's. (No release had shipped 0001's per-job column.)

CREATE TABLE workers (
    id                text PRIMARY KEY,
    started_at        timestamptz NOT NULL DEFAULT now(),
    lease_expires_at  timestamptz NOT NULL
);
CREATE INDEX workers_lease_idx ON workers (lease_expires_at);

ALTER TABLE jobs DROP CONSTRAINT jobs_check;
DROP INDEX jobs_lease_idx;
ALTER TABLE jobs DROP COLUMN lease_expires_at;
ALTER TABLE jobs ADD CONSTRAINT jobs_running_has_worker
    CHECK ((status = 'running') = (worker_id IS NOT NULL));
-- Finding the running jobs of workers whose lease expired.
CREATE INDEX jobs_worker_idx ON jobs (worker_id) WHERE status = 'running';
