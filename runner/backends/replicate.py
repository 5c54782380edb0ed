"""Replicate predictions: create, poll /predictions/{id}, cancel with /predictions/{id}/cancel."""

from __future__ import annotations

import math
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

_PENDING = {"starting", "processing"}


class ReplicateBackend(PollingBackend):
    async def submit(self, call: ExecutionCall) -> str:
        if self.spec.version is not None:
            url, body = f"{self.spec.base_url}/predictions", {"version": self.spec.version}
        else:
            url, body = f"{self.spec.base_url}/models/{self.spec.model}/predictions", {}
        headers = ({"Cancel-After": f"{math.ceil(call.deadline_s)}s"}  # Replicate stops it itself
                   if call.deadline_s is not None else None)
        reply = await self.request("POST", url, "replicate create",
                                   json_body={**body, "input": call.input}, call=call, headers=headers)
        return remote_id_from(reply, "id", "replicate create")

    async def poll(self, remote_id: str) -> Poll:
        body = require_object(
            await self.request("GET", f"{self.spec.base_url}/predictions/{remote_id}",
                               "replicate status"), "replicate status")
        status = body.get("status")
        metrics = body.get("metrics")
        spent = seconds_from(metrics.get("predict_time")) if isinstance(metrics, dict) else None
        if status in _PENDING:
            return Poll(State.PENDING, gpu_seconds=spent)
        if status == "succeeded":
            return Poll(State.COMPLETED, output=body.get("output"), gpu_seconds=spent)
        if status in ("failed", "canceled", "aborted"):
            why = "cancelled at Replicate (not by this runner)" if status != "failed" else "failed"
            detail = body.get("error")
            return Poll(State.FAILED, error=f"replicate prediction {remote_id} {why}"
                        + (f": {detail}" if detail else ""), gpu_seconds=spent)
        raise unexpected_status("replicate status", status)

    async def cancel_remote(self, job_id: UUID, execution_id: UUID, remote_id: str | None) -> CancelResult:
        assert remote_id is not None
        return await self.cancel_call(
            "POST", f"{self.spec.base_url}/predictions/{remote_id}/cancel", "replicate cancel")
