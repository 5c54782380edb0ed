"""Cancellation, the hot path. One cancel, in order:

1. HTTP: `POST /jobs/{id}/cancel` (api.jobs) validates the request whole, then calls
2. the canceller (canceller.Canceller.cancel_job), which sends one statement
   (statements.CANCEL_JOB: job, executions, owed remote cancels, audit row, NOTIFY; one commit);
3. the registry (registry.JobContextManager) cancels the job's asyncio.Task -- ahead of the
   commit when this instance holds it -- and the task's CancelledError aborts its HTTP calls;
4. the task's cleanup sends the remote cancels (remote.RemoteCanceller.send, shielded) and
   hands its stop record to the stops batcher (stops.StopRecorder);
5. whatever cancel is still owed, the sweeper (remote.RemoteCanceller.sweep) sends from any
   instance. Across instances: the NOTIFY (runner.db.notify) reaches every listener
   (runner.db.listener), and runner.runtime hands it to the registry; a lost one is made
   good by the lease renewal (runner.worker). `?wait=true` waits in waiting.wait_stopped.
"""
