"""Cancellation, the hot path. One cancel, read downward:

1. HTTP: `POST /jobs/{id}/cancel` (api.jobs) validates the request whole, then calls
2. the canceller (canceller.Canceller.cancel_job), which sends one statement
   (statements.CANCEL_JOB: the owner check, runner.jobs.may_act; the job set cancelled,
   statements.finish_job_set; its executions, the owed remote cancels, the audit row, the
   NOTIFY; one commit);
3. the registry (registry.JobContextManager) cancels the job's asyncio.Task -- ahead of the
   commit when this instance holds it (cancel_ahead, PendingCancel) -- and the task's
   CancelledError aborts its HTTP calls;
4. the task's cleanup (stopping.TaskStopping): each execution tells its backend to stop when
   it must (remote.RemoteCanceller.send, shielded); the job's task hands its stop record to
   the stop recorder (stops.StopRecorder, batched by runner.db.batch: statements.RECORD_STOPS);
5. whatever cancel is still owed, the sweeper (remote.RemoteCanceller.sweep) sends from any
   instance (statements.SWEEP_DUE);
6. `?wait=true` waits in waiting.wait_stopped: on the stop recorder where the task runs here,
   else on the job's audit trail (statements.NO_TASK_LEFT).

Across instances, the NOTIFY (runner.db.notify) reaches the listener (runner.db.listener) of
the instance the job's row names as its holder, and no other worker; runner.runtime hands it to the
registry; a lost one is made good by the lease renewal.
Every statement of this package is in statements. The package never imports the worker
(runner.worker), which uses it: it runs the tasks this package registers and stops.
"""
