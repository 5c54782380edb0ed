"""A fake RunPod serverless queue endpoint: /run, /status/{id}, /cancel/{id}.

Sources (runpod/docs unless named): serverless/endpoints/operation-reference.mdx (the answer
bodies), send-requests.mdx (policy, ttl, rate limits), job-states.mdx (the states),
tutorials/serverless/run-your-first.mdx (an IN_PROGRESS body); runpod/runpod-python
serverless/modules/rp_scale.py and rp_job.py (what a cancel does to a worker)."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from runner.fakes.common import Watched, answer_slowly

Handler = Callable[[web.Request], Awaitable[web.Response]]
WEEK_MS = 7 * 24 * 3600 * 1000
DEFAULT_TTL_MS = 24 * 3600 * 1000  # send-requests.mdx: ttl default 86400000 (24 hours)
RETENTION_S = 30 * 60  # operation-reference.mdx: "Result retention: 30 minutes after completion"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


@dataclass
class RunPodJob:
    id: str
    input: dict[str, Any]
    policy: dict[str, Any]
    submitted_at: float  # time.monotonic()
    expires_at: float
    status: str = "IN_QUEUE"
    output: Any = None
    error: str | None = None
    polls: int = 0
    picked_at: float | None = None
    ended_at: float | None = None
    worker_running: bool = False  # "the worker": the handler at work, whatever /status says
    worker_done: bool = False  # the handler reached its end (output ready)


@dataclass
class FakeRunPod(Watched):
    """Jobs by input: `{"polls": n}` completes on the n-th status poll; `{"hold": true}` runs
    until `finish()`; `{"fail": "text"}` fails with that error string."""

    running_status: str = "IN_PROGRESS"  # or "RUNNING", which job-states.mdx documents too
    queue_polls: int = 1  # status polls answered IN_QUEUE before a worker picks a job up
    # "sync": a def handler(job), which runpod-python runs inline on its loop (rp_job.py
    # run_job: `handler_return = handler(job)`), so a cancel cannot stop it: it runs to its end.
    # "async": an async handler on runpod-python >= 1.10, whose per-job stop (PR #510,
    # rp_scale.py stop_job: task.cancel()) does stop it.
    handler: str = "sync"
    status_429: int = 0  # this many status polls are answered 429 first
    cancel_429: int = 0  # this many cancels are answered 429 first
    # send-requests.mdx "Rate limits": /cancel 100 requests per 10 seconds per endpoint.
    cancel_limit: tuple[int, float] | None = (100, 10.0)
    status_delay_s: float = 0.0  # a slow provider: each status answer takes this long
    # When set, only `Authorization: Bearer <api_key>` is let in (send-requests.mdx); change it
    # to model a rotated key. The 401's body is not documented (composed).
    api_key: str | None = None
    answer_gate: asyncio.Event | None = None  # when set: /run answers only once it is set
    jobs: dict[str, RunPodJob] = field(default_factory=dict)
    submits: list[Any] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    cancel_times: list[float] = field(default_factory=list)  # time.monotonic() of each /cancel
    cancelled: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    cancel_received: dict[str, float] = field(default_factory=dict)  # first /cancel, perf_counter
    submitted: asyncio.Event = field(default_factory=asyncio.Event)
    status_open: int = 0
    status_open_max: int = 0
    refused: list[str] = field(default_factory=list)  # paths refused for their key
    _recent_cancels: deque[float] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        Watched.__init__(self)

    def add_routes(self, app: web.Application, prefix: str = "/v2") -> None:
        app.router.add_post(prefix + "/{endpoint}/run", self._authorized(self._run))
        app.router.add_get(prefix + "/{endpoint}/status/{id}", self._authorized(self._status))
        app.router.add_post(prefix + "/{endpoint}/cancel/{id}", self._authorized(self._cancel))

    def _authorized(self, handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.Response:
            if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                self.refused.append(request.path)
                self.touch()
                return web.json_response({"error": "Unauthorized"}, status=401)
            return await handler(request)

        return check

    # -- test hooks ----------------------------------------------------------------------------

    def finish(self, remote_id: str, output: Any) -> None:
        """The worker's handler returns `output`."""
        job = self.jobs[remote_id]
        job.output, job.worker_done = output, True
        self._advance(job, time.monotonic())
        self.touch()

    def expire(self, remote_id: str) -> None:
        """The job's ttl (or its result's retention) ends: RunPod deletes it."""
        self.jobs[remote_id].expires_at = 0.0

    def worker_running(self, remote_id: str) -> bool:
        return self.jobs[remote_id].worker_running

    # -- the API -------------------------------------------------------------------------------

    async def _run(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.submits.append(body)
        self.submitted.set()
        work = body.get("input") if isinstance(body, dict) else None
        if not isinstance(work, dict):
            # runpodctl cmd/serverless/run.go: "input" is decoded into a json object, "so an
            # array or a scalar is rejected server-side with a 400" (body not documented: composed).
            return web.json_response({"error": "input must be a JSON object"}, status=400)
        policy = body.get("policy") or {}
        problem = _policy_problem(policy)
        if problem:  # send-requests.mdx: "Both ttl and executionTimeout have a maximum of 7 days."
            return web.json_response({"error": problem}, status=400)  # the body is composed
        now = time.monotonic()
        job = RunPodJob(
            id=f"{next(self._ids):08x}-fake-runpod-job-u1",
            input=work,
            policy=policy,
            submitted_at=now,
            expires_at=now + policy.get("ttl", DEFAULT_TTL_MS) / 1000,
        )
        self.jobs[job.id] = job
        self.touch()
        if self.answer_gate is not None:
            await self.answer_gate.wait()
        # operation-reference.mdx, /run: {"id": "eaebd6e7-...", "status": "IN_QUEUE"}
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    async def _status(self, request: web.Request) -> web.Response:
        job = self._known(request.match_info["id"])
        if job is None:
            # send-requests.mdx: "If TTL expires while a job is running, the job is immediately
            # removed and status checks return 404". The 404 body is not documented (composed).
            return web.json_response({"error": "job not found"}, status=404)
        if self.status_429 > 0:
            self.status_429 -= 1
            # send-requests.mdx: "Requests exceeding the effective limit return 429"; neither a
            # body nor a Retry-After is documented for api.runpod.ai.
            return web.Response(status=429)
        job.polls += 1
        await answer_slowly(self)
        now = time.monotonic()
        if job.status == "IN_QUEUE" and job.polls > self.queue_polls:
            job.status, job.picked_at, job.worker_running = self.running_status, now, True
        polls = job.input.get("polls")
        if job.worker_running and isinstance(polls, int) and job.polls >= polls:
            job.worker_done, job.output = True, {"done": job.input}
        self._advance(job, now)
        self.touch()
        return web.json_response(self._body(job, now))

    async def _cancel(self, request: web.Request) -> web.Response:
        remote_id = request.match_info["id"]
        now = time.monotonic()
        self.cancel_times.append(now)
        self.cancel_received.setdefault(remote_id, time.perf_counter())
        self.touch()
        if self.cancel_429 > 0 or self._over_cancel_limit(now):
            self.cancel_429 = max(self.cancel_429 - 1, 0)
            return web.Response(status=429)  # no Retry-After documented
        job = self._known(remote_id)
        if job is None:  # cancel of an unknown job: not documented (composed)
            return web.json_response({"error": "job not found"}, status=404)
        self.cancels.append(job.id)
        self.cancelled[job.id].set()
        if job.status not in ENDED:
            # operation-reference.mdx: "Stops in-progress jobs, removes queued jobs before they
            # start, and returns immediately with the canceled status". A sync handler runs on.
            job.status, job.ended_at = "CANCELLED", job.ended_at or now
            if self.handler == "async" or job.picked_at is None:
                job.worker_running = False
            job.expires_at = min(job.expires_at, now + RETENTION_S)
        # operation-reference.mdx, /cancel: {"id": "724907fe-...-u1", "status": "CANCELLED"}
        return web.json_response({"id": job.id, "status": "CANCELLED"})

    # -- the model -----------------------------------------------------------------------------

    def _known(self, remote_id: str) -> RunPodJob | None:
        job = self.jobs.get(remote_id)
        return job if job is not None and time.monotonic() < job.expires_at else None

    def _over_cancel_limit(self, now: float) -> bool:
        if self.cancel_limit is None:
            return False
        most, window = self.cancel_limit
        while self._recent_cancels and self._recent_cancels[0] <= now - window:
            self._recent_cancels.popleft()
        if len(self._recent_cancels) >= most:
            return True
        self._recent_cancels.append(now)
        return False

    def _advance(self, job: RunPodJob, now: float) -> None:
        if job.worker_done and job.worker_running:
            job.worker_running = False
            if _running(job):  # after a CANCELLED, /status stays so
                fail = job.input.get("fail")
                job.status, job.error = ("FAILED", str(fail)) if fail else ("COMPLETED", None)
                job.ended_at = now
                job.expires_at = min(job.expires_at, now + RETENTION_S)
        timeout = job.policy.get("executionTimeout")
        if (
            job.worker_running
            and job.picked_at is not None
            and timeout is not None
            and now - job.picked_at > timeout / 1000
        ):
            # endpoint-configurations.mdx: "When exceeded, the job fails and the worker stops."
            # Which status it shows is not stated; TIMED_OUT is job-states.mdx's.
            job.worker_running, job.ended_at = False, now
            if _running(job):
                job.status = "TIMED_OUT"

    def _body(self, job: RunPodJob, now: float) -> dict[str, Any]:
        if job.status == "IN_QUEUE":  # no /status sample: the /run answer's shape
            return {"id": job.id, "status": job.status}
        picked = job.picked_at if job.picked_at is not None else job.ended_at or now
        body: dict[str, Any] = {"delayTime": math.ceil((picked - job.submitted_at) * 1000), "id": job.id}
        if _running(job):
            # run-your-first.mdx: {"delayTime", "id", "input", "status": "IN_PROGRESS"}; a RUNNING
            # body is not documented (composed: the same shape).
            return {**body, "input": job.input, "status": job.status}
        if job.picked_at is not None:  # operation-reference.mdx: "Both values are in milliseconds."
            body["executionTime"] = max(1, math.ceil(((job.ended_at or now) - job.picked_at) * 1000))
        if job.status == "COMPLETED":
            return {**body, "output": job.output, "status": job.status}
        if job.status == "FAILED":  # flash/apps/requests.mdx: {"id", "status": "FAILED", "error"}
            return {**body, "status": job.status, "error": job.error}
        return {**body, "status": job.status}  # CANCELLED, TIMED_OUT: no body documented (composed)


def _running(job: RunPodJob) -> bool:
    """Picked up by a worker and not over: IN_PROGRESS, RUNNING, or whatever `running_status`."""
    return job.status != "IN_QUEUE" and job.status not in ENDED


def _policy_problem(policy: Any) -> str | None:
    if not isinstance(policy, dict):
        return "policy must be an object"
    for key, least in (("executionTimeout", 5_000), ("ttl", 10_000)):
        value = policy.get(key)
        if value is not None and (not isinstance(value, int) or not least <= value <= WEEK_MS):
            return f"policy.{key} must be {least} ms to 7 days"
    return None
