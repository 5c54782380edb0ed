"""Replicate predictions: create, poll /predictions/{id}, cancel with /predictions/{id}/cancel.

Statuses (replicate.com/docs/topics/predictions/lifecycle): starting, processing, then
succeeded, failed, canceled ("by the user or exceeded its deadline after starting") or
aborted ("exceeded its deadline before it could start running"; not billed). A create is
answered 201 (replicate-python tests/cassettes/predictions-cancel.yaml)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
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
    time_from,
    unknown_status,
)

_PENDING = {"starting", "processing"}
# The HTTP API's Cancel-After: never below 5 s (Replicate refuses less), counted from creation.
MIN_CANCEL_AFTER_S = 5
# Clocks differ and Replicate ends the work a little after the deadline: a `canceled` this
# close to (or past) the deadline is the deadline's doing.
DEADLINE_SLACK_S = 1.0


def cancel_after(deadline_s: float) -> str:
    return f"{max(MIN_CANCEL_AFTER_S, math.ceil(deadline_s))}s"


def _ran_s(body: dict[str, Any]) -> float | None:
    created, completed = time_from(body.get("created_at")), time_from(body.get("completed_at"))
    return (completed - created).total_seconds() if created and completed else None


class ReplicateBackend(PollingBackend):
    async def submit(self, call: ExecutionCall) -> Remote:
        if self.spec.version is not None:
            url, body = f"{self.spec.base_url}/predictions", {"version": self.spec.version}
        else:
            url, body = f"{self.spec.base_url}/models/{self.spec.model}/predictions", {}
        headers = (
            {"Cancel-After": cancel_after(call.deadline_s)}  # Replicate stops it itself
            if call.deadline_s is not None
            else None
        )
        reply = await self.request(
            "POST",
            url,
            "replicate create",
            json_body={**body, "input": require_object(call.input, "replicate input")},
            call=call,
            headers=headers,
        )
        return Remote(remote_id_from(reply, "id", "replicate create"))

    async def poll(
        self, remote_id: str, urls: Mapping[str, str] | None = None, deadline_s: float | None = None
    ) -> Poll:
        body = await self.status_body(
            f"{self.spec.base_url}/predictions/{remote_id}",
            "replicate status",
            "Replicate no longer has this prediction",
        )
        status = body.get("status")
        metrics = body.get("metrics")
        spent = seconds_from(metrics.get("predict_time")) if isinstance(metrics, dict) else None
        ended: datetime | None = time_from(body.get("completed_at"))
        if status in _PENDING:
            return Poll(State.PENDING, gpu_seconds=spent)
        if status == "succeeded":
            return Poll(State.COMPLETED, output=body.get("output"), gpu_seconds=spent, stopped_at=ended)
        if status in ("failed", "canceled", "aborted"):
            return Poll(
                State.FAILED,
                error=self._ending(remote_id, status, body, deadline_s),
                gpu_seconds=spent,
                stopped_at=ended,
            )
        return unknown_status(status, spent)

    @staticmethod
    def _ending(remote_id: str, status: str, body: dict[str, Any], deadline_s: float | None) -> str:
        detail = body.get("error")
        tail = f": {detail}" if detail else ""
        what = f"replicate prediction {remote_id}"
        limit = (
            f"its deadline (Cancel-After {cancel_after(deadline_s)})"
            if deadline_s is not None
            else "a deadline"
        )
        if status == "failed":
            return f"{what} failed{tail}"
        if status == "aborted":
            return f"{what} aborted: {limit} passed before it started (not billed){tail}"
        ran = _ran_s(body)
        if deadline_s is not None and (
            ran is None or ran >= max(deadline_s, MIN_CANCEL_AFTER_S) - DEADLINE_SLACK_S
        ):
            return f"{what} canceled at Replicate: {limit} passed while it ran{tail}"
        return f"{what} cancelled at Replicate (not by this runner){tail}"

    async def cancel_remote(
        self, job_id: UUID, execution_id: UUID, remote_id: str | None, urls: Mapping[str, str] | None = None
    ) -> CancelResult:
        assert remote_id is not None
        return await self.cancel_call(
            "POST", f"{self.spec.base_url}/predictions/{remote_id}/cancel", "replicate cancel"
        )
