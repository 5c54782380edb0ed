"""A fake GPU provider on a real local socket: a Modal-style HTTP endpoint, a RunPod API and
a cancel_url. It records what it saw, including when each connection closed."""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class RunPodJob:
    id: str
    input: Any
    status: str = "IN_PROGRESS"
    output: Any = None
    polls: int = 0
    stopping_polls: int | None = None  # after a cancel: polls until the work is seen over


@dataclass
class FakeGpu:
    base_url: str = ""
    http_calls: list[dict[str, Any]] = field(default_factory=list)
    started: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    closed: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    closed_at: dict[str, float] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends the "until_released" calls
    open_now: int = 0  # calls in progress ("slow" mode), and the most there ever were at once
    open_max: int = 0
    url_cancels: list[str] = field(default_factory=list)
    url_cancel_reply: tuple[int, bytes] | None = None  # the cancel_url's status and raw body
    url_cancelled: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    endless_sent: dict[str, int] = field(default_factory=dict)  # bytes of "endless" replies sent
    runpod: dict[str, RunPodJob] = field(default_factory=dict)
    runpod_submits: list[Any] = field(default_factory=list)
    runpod_cancels: list[str] = field(default_factory=list)
    runpod_cancelled: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    runpod_submitted: asyncio.Event = field(default_factory=asyncio.Event)
    runpod_answer_gate: asyncio.Event | None = None  # when set: /run answers only once it is set
    runpod_cancel_lag: int | None = 0  # polls the work runs on after a cancel; None: forever
    runpod_cancel_429: int = 0  # this many cancel calls are answered 429 first
    runpod_cancel_times: list[float] = field(default_factory=list)
    runpod_status_delay_s: float = 0.0  # a slow provider: each status answer takes this long
    runpod_status_open: int = 0  # status calls in progress, and the most there were at once
    runpod_status_open_max: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/run", self._run)
        app.router.add_get("/result/{token}", self._result)
        app.router.add_post("/cancel/{execution_id}", self._url_cancel)
        app.router.add_post("/v2/{endpoint}/run", self._rp_run)
        app.router.add_get("/v2/{endpoint}/status/{id}", self._rp_status)
        app.router.add_post("/v2/{endpoint}/cancel/{id}", self._rp_cancel)
        # handler_cancellation: a handler is cancelled when its client goes away, which is
        # how this fake sees "the connection closed".
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the http kind -----------------------------------------------------------------------

    async def _run(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        execution_id = request.headers.get("X-Runner-Execution-Id", "")
        self.http_calls.append({"headers": dict(request.headers), "body": body})
        self.started[execution_id].set()
        mode = body.get("mode", "echo") if isinstance(body, dict) else "echo"
        if mode == "hold":  # GPU work that goes on until the caller hangs up
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.closed_at[execution_id] = time.perf_counter()
                self.closed[execution_id].set()
                raise
        if mode == "slow":  # GPU work of a given length; how many run at once is noted
            self.open_now += 1
            self.open_max = max(self.open_max, self.open_now)
            try:
                await asyncio.sleep(float(body.get("seconds", 0.2)))
            finally:
                self.open_now -= 1
            return web.json_response({"slept": body.get("seconds", 0.2)})
        if mode == "until_released":  # GPU work that ends when the test says so
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.closed_at[execution_id] = time.perf_counter()
                self.closed[execution_id].set()
                raise
            return web.json_response({"released": body.get("n")})
        if mode == "status":
            headers = {"Retry-After": str(body["retry_after"])} if "retry_after" in body else {}
            return web.Response(status=body["status"], text="nope", headers=headers)
        if mode == "raw":  # exactly these bytes, as a careless endpoint might send them
            raw = body["raw"].encode("latin-1").replace(b"<NUL>", b"\x00").replace(b"<FF>", b"\xff")
            return web.Response(status=body.get("status", 200), body=raw, content_type="application/json")
        if mode == "text":
            return web.Response(text="<html>surprise</html>", content_type="text/html")
        if mode == "endless":  # a chunked reply that never ends; what was sent is counted
            stream = web.StreamResponse(headers={"Content-Type": "application/json"})
            await stream.prepare(request)
            await stream.write(b'{"a": "')
            chunk = b"x" * 65536
            self.endless_sent[execution_id] = 0
            while True:
                await stream.write(chunk)
                self.endless_sent[execution_id] += len(chunk)
        if mode == "gzip_bomb":  # a small body that inflates to `mib` MiB
            inflated = int(body.get("mib", 256)) << 20
            packer = zlib.compressobj(9, zlib.DEFLATED, 31)
            bomb = packer.compress(b"[" + b"0," * (inflated // 2)) + packer.compress(b"0]") + packer.flush()
            return web.Response(body=bomb, headers={"Content-Type": "application/json",
                                                    "Content-Encoding": "gzip"})
        if mode == "redirect":
            raise web.HTTPSeeOther(f"/result/{body.get('hops', 1)}")
        if mode == "offsite":
            raise web.HTTPSeeOther("http://example.invalid/result")
        return web.json_response({"echo": body, "job": request.headers.get("X-Runner-Job-Id")})

    async def _result(self, request: web.Request) -> web.Response:
        hops = int(request.match_info["token"])
        if hops > 1:  # Modal's result URL redirects to itself while the work goes on
            raise web.HTTPSeeOther(f"/result/{hops - 1}")
        return web.json_response({"result": "done"})

    async def _url_cancel(self, request: web.Request) -> web.Response:
        execution_id = request.match_info["execution_id"]
        self.url_cancels.append(execution_id)
        self.url_cancelled[execution_id].set()
        if self.url_cancel_reply is not None:
            status, raw = self.url_cancel_reply
            return web.Response(status=status, body=raw, content_type="application/json")
        return web.json_response({"cancelled": execution_id})

    def calls_for(self, execution_id: str) -> int:
        """How many times the http endpoint was called for this execution."""
        return sum(1 for c in self.http_calls if c["headers"].get("X-Runner-Execution-Id") == execution_id)

    # -- a RunPod API ------------------------------------------------------------------------

    async def _rp_run(self, request: web.Request) -> web.Response:
        body = await request.json()
        job = RunPodJob(id=f"rp-{next(self._ids)}", input=body["input"])
        self.runpod[job.id] = job
        self.runpod_submits.append(body)
        self.runpod_submitted.set()
        if self.runpod_answer_gate is not None:
            await self.runpod_answer_gate.wait()
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    async def _rp_status(self, request: web.Request) -> web.Response:
        job = self.runpod.get(request.match_info["id"])
        if job is None:
            return web.json_response({"error": "not found"}, status=404)
        job.polls += 1
        if self.runpod_status_delay_s:
            self.runpod_status_open += 1
            self.runpod_status_open_max = max(self.runpod_status_open_max, self.runpod_status_open)
            try:
                await asyncio.sleep(self.runpod_status_delay_s)
            finally:
                self.runpod_status_open -= 1
        finish_after = job.input.get("polls") if isinstance(job.input, dict) else None
        if job.status == "IN_PROGRESS" and finish_after is not None and job.polls >= finish_after:
            job.status, job.output = "COMPLETED", {"done": job.input}
        if job.stopping_polls is not None:
            job.stopping_polls -= 1
            if job.stopping_polls <= 0:
                job.status, job.stopping_polls = "CANCELLED", None
        return web.json_response({"id": job.id, "status": job.status, "output": job.output,
                                  "executionTime": 100 * job.polls})

    async def _rp_cancel(self, request: web.Request) -> web.Response:
        job = self.runpod.get(request.match_info["id"])
        if job is None:
            return web.json_response({"error": "not found"}, status=404)
        self.runpod_cancel_times.append(time.monotonic())
        if self.runpod_cancel_429 > 0:
            self.runpod_cancel_429 -= 1
            return web.json_response({"error": "rate limited"}, status=429, headers={"Retry-After": "1"})
        if self.runpod_cancel_lag == 0:
            job.status = "CANCELLED"
        elif job.status == "IN_PROGRESS" and self.runpod_cancel_lag is not None and job.stopping_polls is None:
            job.stopping_polls = self.runpod_cancel_lag  # the worker finishes its step first
        self.runpod_cancels.append(job.id)
        self.runpod_cancelled[job.id].set()
        return web.json_response({"id": job.id, "status": "CANCELLED"})

    def finish_runpod(self, remote_id: str, output: Any) -> None:
        job = self.runpod[remote_id]
        job.status, job.output = "COMPLETED", output
