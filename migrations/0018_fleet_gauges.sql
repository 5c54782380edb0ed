-- The fleet-wide gauges (runner.worker.housekeeping): one worker instance, the fleet's
-- housekeeper, counts the queue, the jobs no live instance can run and the cancels whose
-- work may still run, and publishes the figures here; every other worker shows them from
-- this row, read by the one statement its housekeeping round runs anyway, so each
-- instance's /metrics is whole without each counting the database. UNLOGGED: the next
-- round writes it again after a crash.
CREATE UNLOGGED TABLE fleet_gauges (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),  -- a single row
    figures jsonb NOT NULL,
    counted_at timestamptz NOT NULL
);
