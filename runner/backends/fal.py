"""fal queue: POST /{model}, poll /requests/{id}/status, result /requests/{id}, PUT .../cancel."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from runner.backends.base import CancelOutcome, CancelResult, ExecutionCall, require_object
from runner.backends.polling import (
    Poll,
    PollingBackend,
    State,
    remote_id_from,
    seconds_from,
    unexpected_status,
)


class FalBackend(PollingBackend):
    auth_scheme: ClassVar[str] = "Key"

    @property
    def requests_url(self) -> str:
        # Requests live under the model id (owner/name), without an endpoint subpath.
        model_id = "/".join((self.spec.model or "").split("/")[:2])
        return f"{self.spec.base_url}/{model_id}/requests"

    async def submit(self, call: ExecutionCall) -> str:
        body = await self.request("POST", f"{self.spec.base_url}/{self.spec.model}", "fal submit",
                                  json_body=call.input, call=call)
        return remote_id_from(body, "request_id", "fal submit")

    async def poll(self, remote_id: str) -> Poll:
        body = require_object(
            await self.request("GET", f"{self.requests_url}/{remote_id}/status", "fal status"),
            "fal status")
        status = body.get("status")
        metrics = body.get("metrics")
        spent = seconds_from(metrics.get("inference_time")) if isinstance(metrics, dict) else None
        if status in ("IN_QUEUE", "IN_PROGRESS"):
            return Poll(State.PENDING)
        if status == "COMPLETED":
            if body.get("error"):
                return Poll(State.FAILED, error=f"fal request {remote_id} failed: {body['error']}",
                            gpu_seconds=spent)
            return Poll(State.COMPLETED, gpu_seconds=spent)
        if status in ("FAILED", "CANCELED", "CANCELLED"):
            return Poll(State.FAILED, error=f"fal request {remote_id} ended {status.lower()}",
                        gpu_seconds=spent)
        raise unexpected_status("fal status", status)

    async def result(self, remote_id: str, poll: Poll) -> Any:
        return await self.request("GET", f"{self.requests_url}/{remote_id}", "fal result")

    async def cancel_remote(self, job_id: UUID, execution_id: UUID, remote_id: str | None) -> CancelResult:
        assert remote_id is not None
        result = await self.cancel_call("PUT", f"{self.requests_url}/{remote_id}/cancel", "fal cancel")
        # fal answers 400 ALREADY_COMPLETED when there is nothing left to stop: not a refusal.
        if result.outcome is CancelOutcome.FAILED and "ALREADY_COMPLETED" in result.detail:
            return CancelResult(CancelOutcome.ACKNOWLEDGED, result.detail)
        return result
