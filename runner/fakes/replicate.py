"""A fake Replicate predictions API: create, get, cancel.

Sources: replicate/replicate-python tests/cassettes/predictions-cancel.yaml, run.yaml and
predictions-get.yaml (recorded 201 and 200 bodies); replicate.com/docs/topics/predictions/
lifecycle (statuses, `aborted`), .../rate-limits (the 429 body), the prediction-deadlines
changelog of 2025-10-16 and the HTTP reference (`Cancel-After`)."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from runner.fakes.common import Watched, answer_slowly, iso_now

# rate-limits (newest copy): "a body like" this, and no Retry-After is documented.
THROTTLED = b'{"detail":"Request was throttled. Your rate limit resets in ~30s."}'
MIN_CANCEL_AFTER_S = 5.0  # the HTTP reference: Cancel-After is at least 5 s
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


@dataclass
class Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    created_at: str
    created: float  # time.monotonic()
    deadline: float | None  # Cancel-After, from creation
    status: str = "starting"
    output: Any = None
    error: str | None = None
    started_at: str | None = None
    started: float | None = None
    completed_at: str | None = None
    completed: float | None = None
    polls: int = 0
    done: bool = False  # the model's work reached its end (`finish()`)


@dataclass
class FakeReplicate(Watched):
    """Predictions by input: `{"polls": n}` succeeds on the n-th get; `{"hold": true}` runs
    until `finish()`; `{"fail": "text"}` fails with that error."""

    starting_polls: int = 1  # gets answered `starting` (booting) before `processing`
    status_429: int = 0  # this many gets are answered 429 first
    create_429: int = 0  # this many creates are answered 429 first (nothing created)
    # This many creates are answered 500 *after* the prediction was created: what a lost answer
    # looks like from the client, and why a create is never sent again after a 5xx.
    create_500_after: int = 0
    status_delay_s: float = 0.0
    predictions: dict[str, Prediction] = field(default_factory=dict)
    creates: list[dict[str, Any]] = field(default_factory=list)  # {"body", "headers", "path"}
    cancels: list[str] = field(default_factory=list)
    cancelled: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    status_open: int = 0
    status_open_max: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    base_url: str = ""  # for the `urls` in answers; set by the server

    def __post_init__(self) -> None:
        Watched.__init__(self)

    def add_routes(self, app: web.Application, prefix: str = "/replicate/v1") -> None:
        self.prefix = prefix
        app.router.add_post(prefix + "/predictions", self._create)
        app.router.add_post(prefix + "/models/{owner}/{name}/predictions", self._create)
        app.router.add_get(prefix + "/predictions/{id}", self._get)
        app.router.add_post(prefix + "/predictions/{id}/cancel", self._cancel)

    # -- test hooks ----------------------------------------------------------------------------

    def finish(self, prediction_id: str, output: Any) -> None:
        p = self.predictions[prediction_id]
        p.output, p.done = output, True
        self.touch()

    def pass_deadline(self, prediction_id: str) -> None:
        """Its Cancel-After runs out now."""
        self.predictions[prediction_id].deadline = 0.0

    # -- the API -------------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.creates.append({"body": body, "headers": dict(request.headers), "path": request.path})
        self.touch()
        if self.create_429 > 0:
            self.create_429 -= 1
            return web.Response(status=429, body=THROTTLED, content_type="application/json")
        deadline_s: float | None = None
        header = request.headers.get("Cancel-After")
        if header is not None:
            deadline_s = _duration_s(header)
            if deadline_s is None or deadline_s < MIN_CANCEL_AFTER_S:
                # The HTTP reference: the minimum is 5 s. The refusal's body is not recorded (composed).
                return web.json_response(
                    {"detail": f"Cancel-After must be at least 5s, got {header!r}"}, status=400
                )
        work = body.get("input") if isinstance(body, dict) else None
        if not isinstance(work, dict):  # the refusal's body is not recorded (composed)
            return web.json_response({"detail": "input must be an object"}, status=422)
        owner, name = request.match_info.get("owner"), request.match_info.get("name")
        now = time.monotonic()
        p = Prediction(
            id=f"fake{next(self._ids):022d}"[:26],
            input=work,
            created_at=iso_now(),
            created=now,
            model=f"{owner}/{name}" if owner else "stability-ai/sdxl",
            version=str(body.get("version") or "d-c6559c5791b50af57b69f4a73f8e021c"),
            deadline=None if deadline_s is None else now + deadline_s,
        )
        self.predictions[p.id] = p
        if self.create_500_after > 0:
            self.create_500_after -= 1
            return web.Response(status=500, text="Internal Server Error")
        # predictions-cancel.yaml, interactions 0 and 3: 201 with status "starting".
        return web.json_response(self._body(p, created=True), status=201)

    async def _get(self, request: web.Request) -> web.Response:
        p = self.predictions.get(request.match_info["id"])
        if p is None:  # not recorded (composed)
            return web.json_response({"detail": "Not found."}, status=404)
        if self.status_429 > 0:
            self.status_429 -= 1
            return web.Response(status=429, body=THROTTLED, content_type="application/json")
        await answer_slowly(self)
        p.polls += 1
        self._advance(p)
        self.touch()
        return web.json_response(self._body(p))

    async def _cancel(self, request: web.Request) -> web.Response:
        p = self.predictions.get(request.match_info["id"])
        if p is None:  # not recorded (composed)
            return web.json_response({"detail": "Not found."}, status=404)
        self.cancels.append(p.id)
        self.cancelled[p.id].set()
        self.touch()
        self._advance(p)
        if p.status in ("starting", "processing"):
            # lifecycle: "canceled: the prediction was canceled by the user"; the recorded
            # cancel answer (predictions-cancel.yaml, interaction 4) is already `canceled`,
            # with completed_at and metrics.
            self._end(p, "canceled")
        # A cancel of a finished prediction: not documented (composed: its state, unchanged).
        return web.json_response(self._body(p))

    # -- the model -----------------------------------------------------------------------------

    def _advance(self, p: Prediction) -> None:
        now = time.monotonic()
        if p.status == "starting" and p.polls > self.starting_polls:
            p.status, p.started, p.started_at = "processing", now, iso_now()
        if p.status not in ("starting", "processing"):
            return
        if p.deadline is not None and now >= p.deadline:
            # The 2025-10-16 changelog: "aborted if the deadline is reached before it starts
            # running, and canceled if the deadline is reached while it's running".
            self._end(p, "aborted" if p.status == "starting" else "canceled")
            return
        polls = p.input.get("polls")
        if p.status == "processing" and (p.done or (isinstance(polls, int) and p.polls >= polls)):
            fail = p.input.get("fail")
            if p.output is None and not fail:
                p.output = {"done": p.input}
            self._end(p, "failed" if fail else "succeeded", error=str(fail) if fail else None)

    def _end(self, p: Prediction, status: str, error: str | None = None) -> None:
        p.status, p.error = status, error
        p.completed, p.completed_at = time.monotonic(), iso_now()
        if status != "succeeded":
            p.output = None

    def _body(self, p: Prediction, created: bool = False) -> dict[str, Any]:
        urls = {
            "cancel": f"{self.base_url}{self.prefix}/predictions/{p.id}/cancel",
            "get": f"{self.base_url}{self.prefix}/predictions/{p.id}",
        }
        body: dict[str, Any] = {
            "id": p.id,
            "model": p.model,
            "version": p.version,
            "input": p.input,
            "logs": "",
            "error": p.error,
            "status": p.status,
            "created_at": p.created_at,
        }
        if created:
            return {**body, "urls": urls}  # the recorded 201 has no output, no metrics
        if p.started_at is not None:
            body["started_at"] = p.started_at
        if p.completed_at is not None:
            body["completed_at"] = p.completed_at
            ran = (p.completed or 0) - (p.started or p.completed or 0)
            if p.status != "aborted":  # "Aborted (never started): No charge"
                body["metrics"] = {
                    "predict_time": round(ran, 6),
                    "total_time": round((p.completed or 0) - p.created, 6),
                }
        body["output"] = p.output
        body["urls"] = urls
        return body


def _duration_s(value: str) -> float | None:
    """Cancel-After: `s`/`m`/`h`, combinable; a bare number is seconds."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    match = _DURATION.fullmatch(value)
    if not value or match is None:
        return None
    h, m, s = (int(g) if g else 0 for g in match.groups())
    return float(h * 3600 + m * 60 + s)
