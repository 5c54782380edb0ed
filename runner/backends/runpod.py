"""RunPod serverless: POST /{endpoint}/run, poll /status/{id}, cancel with /cancel/{id}.

What the API really does (runpod/docs serverless/endpoints/operation-reference.mdx,
send-requests.mdx, job-states.mdx): a job goes IN_QUEUE -> IN_PROGRESS or RUNNING -> an end;
/cancel answers CANCELLED at once, whatever the worker's handler goes on doing, so CANCELLED
proves no stop; a job is deleted at its `ttl` (a status 404 from then on)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from runner.backends.base import CancelResult, ExecutionCall, require_object
from runner.backends.polling import (
    Poll,
    PollingBackend,
    Remote,
    State,
    remote_id_from,
    seconds_from,
    unknown_status,
)

# RUNNING is documented in job-states.mdx only ("A worker has picked up the job").
_PENDING = {"IN_QUEUE", "IN_PROGRESS", "RUNNING"}
# send-requests.mdx "Execution policies": executionTimeout 5 s ... 7 days (from a worker's
# pick-up), ttl 10 s ... 7 days (from submission: queue time included), both in ms.
MIN_EXECUTION_MS = 5_000
MIN_TTL_MS = 10_000
MAX_POLICY_MS = 7 * 24 * 3600 * 1000


def policy(deadline_s: float) -> dict[str, int]:
    """The deadline as RunPod's policy, within its bounds. The ttl is the whole deadline (it
    counts queue time; at its end RunPod deletes the job whatever it is doing); the
    executionTimeout, which counts only from a worker's pick-up, is never longer."""
    ms = math.ceil(deadline_s * 1000)
    execution = min(max(ms, MIN_EXECUTION_MS), MAX_POLICY_MS)
    ttl = min(max(ms, MIN_TTL_MS, execution), MAX_POLICY_MS)
    return {"executionTimeout": execution, "ttl": ttl}


class RunPodBackend(PollingBackend):
    @property
    def endpoint(self) -> str:
        return f"{self.spec.base_url}/{self.spec.endpoint_id}"

    async def submit(self, call: ExecutionCall) -> Remote:
        # RunPod decodes `input` into an object: anything else is refused (runpodctl
        # cmd/serverless/run.go); the API refuses it at submit already, this is a backstop.
        payload: dict[str, Any] = {"input": require_object(call.input, "runpod input")}
        if call.deadline_s is not None:  # RunPod stops the job itself, whatever becomes of us
            payload["policy"] = policy(call.deadline_s)
        body = await self.request(
            "POST", f"{self.endpoint}/run", "runpod submit", json_body=payload, call=call
        )
        return Remote(remote_id_from(body, "id", "runpod submit"))

    async def poll(
        self, remote_id: str, urls: Mapping[str, str] | None = None, deadline_s: float | None = None
    ) -> Poll:
        body = await self.status_body(
            f"{self.endpoint}/status/{remote_id}",
            "runpod status",
            "RunPod deletes a job at the end of its ttl"
            + (f" (here the deadline, {deadline_s:.0f} s)" if deadline_s is not None else "")
            + " and its result 30 minutes after it ends",
        )
        status = body.get("status")
        spent = seconds_from(body.get("executionTime"), 0.001)  # milliseconds
        if status in _PENDING:
            return Poll(State.PENDING, gpu_seconds=spent)
        if status == "COMPLETED":
            return Poll(State.COMPLETED, output=body.get("output"), gpu_seconds=spent)
        if status == "CANCELLED":
            # Answered at once by /cancel, whatever the worker does: over, but no proof of a stop.
            return Poll(
                State.FAILED,
                gpu_seconds=spent,
                proves_stop=False,
                error=f"runpod job {remote_id} cancelled at RunPod (not by this runner)",
            )
        if status in ("FAILED", "TIMED_OUT"):
            if status == "FAILED":
                why = "failed"
            elif deadline_s is not None:
                why = (
                    f"timed out at RunPod: its deadline ({deadline_s:.0f} s, "
                    "policy.executionTimeout/ttl) passed"
                )
            else:
                why = "timed out at RunPod"
            detail = body.get("error")
            return Poll(
                State.FAILED,
                gpu_seconds=spent,
                error=f"runpod job {remote_id} {why}" + (f": {detail}" if detail else ""),
            )
        return unknown_status(status, spent)

    async def cancel_remote(
        self, job_id: UUID, execution_id: UUID, remote_id: str | None, urls: Mapping[str, str] | None = None
    ) -> CancelResult:
        assert remote_id is not None
        return await self.cancel_call("POST", f"{self.endpoint}/cancel/{remote_id}", "runpod cancel")
