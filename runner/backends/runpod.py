"""RunPod serverless: POST /{endpoint}/run, poll /status/{id}, cancel with /cancel/{id}."""

from __future__ import annotations

import math
from typing import Any
from uuid import UUID

from runner.backends.base import CancelResult, ExecutionCall, require_object
from runner.backends.polling import (
    Poll,
    PollingBackend,
    State,
    remote_id_from,
    seconds_from,
    unexpected_status,
)

_PENDING = {"IN_QUEUE", "IN_PROGRESS"}
MIN_TIMEOUT_MS = 5000
_FAILED = {"FAILED": "failed", "TIMED_OUT": "timed out at RunPod",
           "CANCELLED": "cancelled at RunPod (not by this runner)"}


class RunPodBackend(PollingBackend):
    @property
    def endpoint(self) -> str:
        return f"{self.spec.base_url}/{self.spec.endpoint_id}"

    async def submit(self, call: ExecutionCall) -> str:
        payload: dict[str, Any] = {"input": call.input}
        if call.deadline_s is not None:  # RunPod stops the job itself; its minimum is 5 s
            payload["policy"] = {"executionTimeout": max(MIN_TIMEOUT_MS, math.ceil(call.deadline_s * 1000))}
        body = await self.request("POST", f"{self.endpoint}/run", "runpod submit",
                                  json_body=payload, call=call)
        return remote_id_from(body, "id", "runpod submit")

    async def poll(self, remote_id: str) -> Poll:
        body = require_object(
            await self.request("GET", f"{self.endpoint}/status/{remote_id}", "runpod status"),
            "runpod status")
        status = body.get("status")
        spent = seconds_from(body.get("executionTime"), 0.001)  # milliseconds
        if status in _PENDING:
            return Poll(State.PENDING, gpu_seconds=spent)
        if status == "COMPLETED":
            return Poll(State.COMPLETED, output=body.get("output"), gpu_seconds=spent)
        if status in _FAILED:
            detail = body.get("error")
            return Poll(State.FAILED, error=f"runpod job {remote_id} {_FAILED[status]}"
                        + (f": {detail}" if detail else ""), gpu_seconds=spent)
        raise unexpected_status("runpod status", status)

    async def cancel_remote(self, job_id: UUID, execution_id: UUID, remote_id: str | None) -> CancelResult:
        assert remote_id is not None
        return await self.cancel_call("POST", f"{self.endpoint}/cancel/{remote_id}", "runpod cancel")
