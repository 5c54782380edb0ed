"""fal queue: POST /{model}, then the status_url, response_url and cancel_url fal returns.

fal.ai/docs/api-reference/inference-api: "The status, result, and cancel URLs use only the
owner and the app. Do not build these URLs yourself. Use the status_url, response_url, and
cancel_url fields from the submit response." Apps under `workflows/` and `comfy/` keep three
segments (fal_client `AppId.from_endpoint_id`, fal-js `ENDPOINT_NAMESPACES`). A status is
answered 202 while pending and 200 once COMPLETED; COMPLETED may carry `error` and
`error_type` (fal_client `_parse_status`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar
from uuid import UUID

from runner.backends.base import CancelOutcome, CancelResult, ExecutionCall, require_object, same_origin
from runner.backends.polling import (
    Poll,
    PollingBackend,
    Remote,
    State,
    remote_id_from,
    seconds_from,
    unknown_status,
)
from runner.errors import PermanentBackendError, TransientBackendError
from runner.storable import text_problem

NAMESPACES = ("workflows", "comfy")
MAX_URL = 2000
URL_KEYS = {"status": "status_url", "response": "response_url", "cancel": "cancel_url"}
# fal_client and fal-js refuse an X-Fal-Request-Timeout of 1 s or less (the docs say > 0.1 s).
MIN_START_TIMEOUT_S = 1.1


def app_path(model: str) -> str:
    """The owner/app part of a model id, as fal_client's AppId.from_endpoint_id splits it:
    only for work whose URLs fal did not return to us (stored before they were kept)."""
    parts = model.split("/")
    keep = 3 if parts[0] in NAMESPACES else 2
    return "/".join(parts[:keep])


def start_timeout(deadline_s: float) -> str:
    """X-Fal-Request-Timeout: seconds for the request to start (a request not started by
    then never starts); as fal_client sends it, `str(float)`."""
    return str(max(MIN_START_TIMEOUT_S, math.ceil(deadline_s * 10) / 10))


class FalBackend(PollingBackend):
    auth_scheme: ClassVar[str] = "Key"

    def urls(self, remote_id: str, urls: Mapping[str, str] | None) -> Mapping[str, str]:
        if urls:
            return urls
        base = f"{self.spec.base_url}/{app_path(self.spec.model or '')}/requests/{remote_id}"
        return {"status": f"{base}/status", "response": base, "cancel": f"{base}/cancel"}

    async def submit(self, call: ExecutionCall) -> Remote:
        headers = (
            {"X-Fal-Request-Timeout": start_timeout(call.deadline_s)} if call.deadline_s is not None else None
        )
        body = await self.request(
            "POST",
            f"{self.spec.base_url}/{self.spec.model}",
            "fal submit",
            json_body=require_object(call.input, "fal input"),
            call=call,
            headers=headers,
        )
        request_id = remote_id_from(body, "request_id", "fal submit")
        urls = dict(self.urls(request_id, None))  # what fal_client builds, where fal returned none
        for name, key in URL_KEYS.items():
            url = body.get(key)
            if not isinstance(url, str) or not url:
                continue
            if len(url) > MAX_URL or text_problem(url):
                raise PermanentBackendError(f"fal submit: the returned {key} is not a URL we can store")
            if not same_origin(url, self.spec.base_url or ""):
                raise PermanentBackendError(
                    f"fal submit: refusing the returned {key} {url[:200]!r}: not on the configured "
                    f"base_url's origin (the key is sent nowhere else)"
                )
            urls[name] = url
        return Remote(request_id, urls)

    async def poll(
        self, remote_id: str, urls: Mapping[str, str] | None = None, deadline_s: float | None = None
    ) -> Poll:
        body = await self.status_body(
            self.urls(remote_id, urls)["status"], "fal status", "fal no longer knows this request"
        )
        status = body.get("status")
        metrics = body.get("metrics")
        spent = seconds_from(metrics.get("inference_time")) if isinstance(metrics, dict) else None
        if status in ("IN_QUEUE", "IN_PROGRESS"):
            return Poll(State.PENDING)
        if status == "COMPLETED":
            if body.get("error") or body.get("error_type"):
                return Poll(State.FAILED, error=self._error(remote_id, body, deadline_s), gpu_seconds=spent)
            return Poll(State.COMPLETED, gpu_seconds=spent)
        return unknown_status(status, spent)

    @staticmethod
    def _error(remote_id: str, body: dict[str, Any], deadline_s: float | None) -> str:
        error_type, error = body.get("error_type"), body.get("error")
        if error_type == "request_timeout" and deadline_s is not None:
            return (
                f"fal request {remote_id} did not start before its deadline "
                f"(X-Fal-Request-Timeout {start_timeout(deadline_s)} s): {error}"
            )
        return f"fal request {remote_id} failed ({error_type or 'error'}): {error}"

    async def result(self, remote_id: str, poll: Poll, urls: Mapping[str, str] | None = None) -> Any:
        try:
            return await self.request("GET", self.urls(remote_id, urls)["response"], "fal result")
        except (PermanentBackendError, TransientBackendError) as exc:
            if exc.status == 499:  # fal's app.py: a cancelled request's result
                raise PermanentBackendError(
                    f"fal request {remote_id} was cancelled: {exc}", status=499, work_over=True
                ) from None
            if exc.status == 504 and "request_timeout" in str(exc):  # never started: not retried
                raise PermanentBackendError(
                    f"fal request {remote_id} did not start before its deadline: {exc}",
                    status=504,
                    work_over=True,
                ) from None
            raise

    async def cancel_remote(
        self, job_id: UUID, execution_id: UUID, remote_id: str | None, urls: Mapping[str, str] | None = None
    ) -> CancelResult:
        assert remote_id is not None
        result = await self.cancel_call("PUT", self.urls(remote_id, urls)["cancel"], "fal cancel")
        # fal answers 400 ALREADY_COMPLETED when there is nothing left to stop: not a refusal.
        if result.outcome is CancelOutcome.FAILED and "ALREADY_COMPLETED" in result.detail:
            return CancelResult(CancelOutcome.ACKNOWLEDGED, result.detail)
        return result
