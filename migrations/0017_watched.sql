-- Who waits for which change hint (runner.watch, runner.db.notify): an instance with the API
-- registers each job or wallet key it has a watcher for (an event stream, `?wait=true`), and
-- renews it while watched. The instances' change hints (runner_change) go out only for keys
-- found here: each notifying commit wakes every listening backend of the database (Postgres
-- up to 18), so a hint nobody waits for -- one per cancel's stop record -- costs every
-- instance of a fleet a wake-up.
--
-- UNLOGGED: no WAL for its renewals; a crash empties it, and the instances register their
-- keys again when their listeners reconnect. During a rolling deploy, instances of the
-- previous release send every hint (as before) and do not register their watchers: those
-- get no hints from the new release's instances, and see changes at their own re-reads
-- (each event stream's ping, every 15 s; a `?wait=true` may answer `stopped: false`).
CREATE UNLOGGED TABLE watched (
    key text PRIMARY KEY,  -- 'j' || job id hex, 'w' || wallet address hex (lower case)
    until timestamptz NOT NULL
);
