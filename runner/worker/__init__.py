"""The worker, from parts (worker composes them): claiming (claims), the job tasks (tasks),
running one execution (execution) and its turns at limited backends (slots), the results'
writes (results), the leases (leases), the housekeeping (housekeeping); the statements they
run (store) and what those take and return (records). It uses the cancel path
(runner.cancel), which never uses it."""
