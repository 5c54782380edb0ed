"""A fake fal queue: submit, then the status, response and cancel URLs it returns.

Sources: fal.ai/docs/api-reference/inference-api (the returned URLs; 202 while pending, 200
once COMPLETED), fal.ai/docs/inference-api/queue/cancel (the cancel answers), the common
parameters page (X-Fal-Request-Timeout); fal-ai/fal projects/fal_client/src/fal_client/
client.py (AppId.from_endpoint_id, _parse_status), projects/fal/src/fal/app.py (499 for a
cancelled request), projects/fal/tests/e2e/test_apps.py (test_app_cancellation); fal-ai/fal-js
libs/client/src/utils.ts (ENDPOINT_NAMESPACES) and libs/client/src/types/common.ts."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from runner.fakes.common import Watched

NAMESPACES = ("workflows", "comfy")  # fal_client APP_NAMESPACES, fal-js ENDPOINT_NAMESPACES
# app.py: `return JSONResponse({"detail": str(exc)}, 499)` for RequestCancelledException.
CANCELLED_RESULT = b'{"detail":"Request cancelled by the client."}'


def app_id(model: str) -> str:
    """fal_client AppId.from_endpoint_id: owner/app, or namespace/owner/app for `workflows/`
    and `comfy/`; an endpoint's sub-path is dropped from the request URLs."""
    parts = model.split("/")
    return "/".join(parts[:3] if parts[0] in NAMESPACES else parts[:2])


@dataclass
class FalRequest:
    id: str
    model: str
    input: dict[str, Any]
    submitted: float
    start_by: float | None  # X-Fal-Request-Timeout: a request not started by then never starts
    status: str = "IN_QUEUE"
    polls: int = 0
    started: float | None = None
    ended: float | None = None
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    cancel_requested: bool = False
    stop_in: int | None = None  # status polls until the app's cancel handler has stopped it
    result_fetches: int = 0


@dataclass
class FakeFal(Watched):
    """Requests by input: `{"polls": n}` completes on the n-th status poll; `{"hold": true}`
    runs until `finish()`; `{"error": "text", "error_type": "..."}` completes with that error."""

    queue_polls: int = 1  # status polls answered IN_QUEUE before a runner picks it up
    # Apps that define a cancel route (fal's handle-cancellations): a cancel stops their work
    # and the result answers 499. Others "just ignore the cancellation" (test_app_cancellation).
    cancel_route: bool = True
    cancel_lag_polls: int = 0  # status polls a cancelled app takes to stop
    status_429: int = 0
    url_origin: str | None = None  # hand out URLs on another origin (to test that they are refused)
    requests: dict[str, FalRequest] = field(default_factory=dict)
    submits: list[dict[str, Any]] = field(default_factory=list)  # {"model", "body", "headers"}
    cancels: list[str] = field(default_factory=list)
    cancelled: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    status_urls_polled: list[str] = field(default_factory=list)
    base_url: str = ""
    prefix: str = "/fal"
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        Watched.__init__(self)

    def add_routes(self, app: web.Application, prefix: str = "/fal") -> None:
        self.prefix = prefix
        app.router.add_get(prefix + "/{app:.+}/requests/{id}/status", self._status)
        app.router.add_put(prefix + "/{app:.+}/requests/{id}/cancel", self._cancel)
        app.router.add_get(prefix + "/{app:.+}/requests/{id}", self._result)
        app.router.add_post(prefix + "/{model:.+}", self._submit)

    # -- test hooks ----------------------------------------------------------------------------

    def finish(self, request_id: str, output: Any) -> None:
        r = self.requests[request_id]
        r.output = output
        self._end(r)
        self.touch()

    def pass_start_deadline(self, request_id: str) -> None:
        self.requests[request_id].start_by = 0.0

    # -- the API -------------------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        body = await request.json()
        self.submits.append({"model": model, "body": body, "headers": dict(request.headers)})
        self.touch()
        if not isinstance(body, dict):  # the refusal's body is not documented (composed)
            return web.json_response({"detail": "the input must be an object"}, status=422)
        timeout = request.headers.get("X-Fal-Request-Timeout")
        now = time.monotonic()
        r = FalRequest(
            id=str(uuid.UUID(int=next(self._ids) + 1)),
            model=model,
            input=body,
            submitted=now,
            start_by=None if timeout is None else now + float(timeout),
        )
        self.requests[r.id] = r
        base = f"{self.url_origin or self.base_url}{self.prefix}/{app_id(model)}/requests/{r.id}"
        # fal-submit-fast-sdxl (docs.fal.ai/model-endpoints/queue): request_id and the three
        # URLs; fal-js queue.spec.ts mocks add status IN_QUEUE and queue_position.
        return web.json_response(
            {
                "status": "IN_QUEUE",
                "request_id": r.id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": self._position(r),
            }
        )

    async def _status(self, request: web.Request) -> web.Response:
        r = self._find(request)
        self.status_urls_polled.append(str(request.url.path))
        if r is None:  # queue/cancel lists NOT_FOUND; for a status, not documented (composed)
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        if self.status_429 > 0:
            self.status_429 -= 1
            return web.json_response({"detail": "Too many requests"}, status=429)  # composed
        r.polls += 1
        self._advance(r)
        self.touch()
        if r.status == "IN_QUEUE":
            # fal-status-in-queue-doc: {"status", "queue_position", "response_url"}; 202 while
            # pending (inference-api: "returns 202 while the request is in the queue or in progress").
            return web.json_response(
                {"status": "IN_QUEUE", "queue_position": self._position(r), "response_url": self._base(r)},
                status=202,
            )
        if r.status == "IN_PROGRESS":  # fal_client reads data["logs"]: always sent
            return web.json_response({"status": "IN_PROGRESS", "logs": []}, status=202)
        body: dict[str, Any] = {"status": "COMPLETED", "logs": []}
        if r.started is not None and r.ended is not None:  # "Seconds the runner spent processing"
            body["metrics"] = {"inference_time": round(r.ended - r.started, 6)}
        if r.error is not None:  # fal_client _parse_status: COMPLETED with error and error_type
            body.update(error=r.error, error_type=r.error_type)
        return web.json_response(body)

    async def _result(self, request: web.Request) -> web.Response:
        r = self._find(request)
        if r is None:
            return web.json_response({"status": "NOT_FOUND"}, status=404)  # composed
        self._advance(r)
        r.result_fetches += 1
        if r.status != "COMPLETED":
            # test_apps.py test_app_client_async expects 400 for a result fetched too early;
            # the body is not documented (composed).
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        if r.error_type == "request_timeout":
            # request-errors: {"detail": "Request timed out", "error_type": "request_timeout"},
            # 504 with X-Fal-Request-Timeout-Type: user (common parameters page).
            return web.json_response(
                {"detail": "Request timed out", "error_type": "request_timeout"},
                status=504,
                headers={"X-Fal-Request-Timeout-Type": "user", "X-Fal-Error-Type": "request_timeout"},
            )
        if r.error_type == "client_cancelled":
            return web.Response(status=499, body=CANCELLED_RESULT, content_type="application/json")
        if r.error is not None:  # composed: the error's detail, as the 504 above
            return web.json_response({"detail": r.error, "error_type": r.error_type}, status=500)
        return web.json_response(r.output)

    async def _cancel(self, request: web.Request) -> web.Response:
        r = self._find(request)
        self.touch()
        if r is None:  # queue/cancel: NOT_FOUND (404); exact body not verified
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        self._advance(r)
        if r.status == "COMPLETED":  # queue/cancel: ALREADY_COMPLETED (400)
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        self.cancels.append(r.id)
        self.cancelled[r.id].set()
        if r.status == "IN_QUEUE":
            # queue/cancel: "If the request is in the queue, fal removes it." What its status
            # says then is not documented (composed: COMPLETED with client_cancelled, one of the
            # error types of request-errors, "The request was cancelled by the client.").
            r.error, r.error_type = "The request was cancelled by the client.", "client_cancelled"
            self._end(r)
        elif self.cancel_route:
            # "fal sends a cancellation signal to the runner. The model app decides how to stop
            # the work." With a cancel route it stops, and its result answers 499.
            r.cancel_requested, r.stop_in = True, self.cancel_lag_polls
            self._advance(r)
        # An app without one runs to its end: COMPLETED with its normal result.
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    # -- the model -----------------------------------------------------------------------------

    def _find(self, request: web.Request) -> FalRequest | None:
        r = self.requests.get(request.match_info["id"])
        return r if r is not None and app_id(r.model) == request.match_info["app"] else None

    def _base(self, r: FalRequest) -> str:
        return f"{self.url_origin or self.base_url}{self.prefix}/{app_id(r.model)}/requests/{r.id}"

    def _position(self, r: FalRequest) -> int:
        return sum(1 for o in self.requests.values() if o.status == "IN_QUEUE" and o.submitted < r.submitted)

    def _advance(self, r: FalRequest) -> None:
        now = time.monotonic()
        if r.status == "IN_QUEUE":
            if r.start_by is not None and now >= r.start_by:
                # X-Fal-Request-Timeout: not started by then, it never starts (fal_client's
                # test fixture: COMPLETED, "Request timed out", request_timeout).
                r.error, r.error_type = "Request timed out", "request_timeout"
                self._end(r)
                return
            if r.polls > self.queue_polls:
                r.status, r.started = "IN_PROGRESS", now
        if r.status != "IN_PROGRESS":
            return
        if r.cancel_requested and r.stop_in is not None:
            if r.stop_in <= 0:
                r.error, r.error_type = "The request was cancelled by the client.", "client_cancelled"
                self._end(r)
                return
            r.stop_in -= 1
        polls = r.input.get("polls")
        if isinstance(polls, int) and r.polls >= polls:
            if r.input.get("error"):
                r.error = str(r.input["error"])
                r.error_type = str(r.input.get("error_type", "internal_error"))
            else:
                r.output = {"done": r.input}
            self._end(r)

    def _end(self, r: FalRequest) -> None:
        if r.started is None and r.error_type not in ("request_timeout", "client_cancelled"):
            r.started = time.monotonic()
        r.status, r.ended = "COMPLETED", time.monotonic()
