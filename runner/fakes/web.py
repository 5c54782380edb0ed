"""A fake web endpoint for the `http` kind: a Modal web endpoint (mode "modal") and the plain
or careless endpoints a user may run. It notes (on time.perf_counter(), one clock for every
process) when each call opened, when its connection closed and when a cancel_url came.

Modal's behaviour, from modal.com/docs/guide/webhook-timeouts: a request is cut at 150 s and
answered 303 to the same URL with `__modal_function_call_id=fc-...` (the parameter's name is
in older copies of the page); "The result URL can be reloaded without triggering a new
request"; once its body was sent it "may not be accessed again". Nothing documents that a
closed connection stops the call: `FunctionCall.cancel` does (modal-labs/modal-client
py/modal/_functions.py), which users reach through an endpoint of their own: here
`POST /modal/cancel/{call_id}`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from runner.fakes.common import Watched

CALL_ID = "__modal_function_call_id"


@dataclass
class ModalCall:
    id: str
    input: dict[str, Any]
    task: asyncio.Task[Any]
    cancelled: bool = False  # by FunctionCall.cancel
    consumed: bool = False  # its result was sent once


@dataclass
class FakeWebEndpoint(Watched):
    calls: list[dict[str, Any]] = field(default_factory=list)  # {"headers", "body"} of each POST
    started: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    closed: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    opened_at: dict[str, float] = field(default_factory=dict)
    closed_at: dict[str, float] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends the "until_released" calls
    open_now: int = 0  # calls at work ("slow" mode), and the most there ever were at once
    open_max: int = 0
    url_cancels: list[str] = field(default_factory=list)
    url_cancel_at: dict[str, float] = field(default_factory=dict)
    url_cancel_reply: tuple[int, bytes, dict[str, str]] | None = None  # status, body, headers
    url_cancel_delay_s: float = 0.0  # a slow cancel endpoint: the answer comes this late
    url_cancelled: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    endless_sent: dict[str, int] = field(default_factory=dict)  # bytes of "endless" replies sent
    modal_cut_s: float = 150.0  # Modal cuts a web request here and redirects to the result URL
    modal_calls: dict[str, ModalCall] = field(default_factory=dict)
    modal_cancels: list[str] = field(default_factory=list)
    _call_ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        Watched.__init__(self)

    def add_routes(self, app: web.Application, prefix: str = "") -> None:
        app.router.add_post(prefix + "/run", self._run)
        app.router.add_get(prefix + "/run", self._modal_result)
        app.router.add_get(prefix + "/result/{token}", self._result)
        app.router.add_post(prefix + "/cancel/{execution_id}", self._url_cancel)
        app.router.add_post(prefix + "/modal/cancel/{call_id}", self._modal_cancel)

    def calls_for(self, execution_id: str) -> int:
        """How many times the endpoint was POSTed to for this execution."""
        return sum(1 for c in self.calls if c["headers"].get("X-Runner-Execution-Id") == execution_id)

    async def stop_calls(self) -> None:
        for call in self.modal_calls.values():
            call.task.cancel()
        await asyncio.gather(*(c.task for c in self.modal_calls.values()), return_exceptions=True)

    # -- the endpoint ----------------------------------------------------------------------------

    def _note(self, where: dict[str, float], key: str) -> None:
        where[key] = time.perf_counter()
        self.touch()

    async def _work(self, key: str, work: Callable[[], Awaitable[Any]]) -> Any:
        """GPU work bound to its request, as a plain server runs it: the handler is cancelled
        when the client goes away, which is how this fake sees "the connection closed"."""
        try:
            return await work()
        except asyncio.CancelledError:
            self._note(self.closed_at, key)
            self.closed[key].set()
            raise

    async def _run(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        key = request.headers.get("X-Runner-Execution-Id", "")
        self.calls.append({"headers": dict(request.headers), "body": body})
        self._note(self.opened_at, key)
        self.started[key].set()
        mode = body.get("mode", "echo") if isinstance(body, dict) else "echo"
        if mode == "modal":
            return await self._modal_start(request, body)
        if mode == "hold":  # GPU work that goes on until the caller hangs up
            await self._work(key, lambda: asyncio.sleep(3600))
        if mode == "slow":  # GPU work of a given length; how many run at once is noted
            self.open_now += 1
            self.open_max = max(self.open_max, self.open_now)
            try:
                await self._work(key, lambda: asyncio.sleep(float(body.get("seconds", 0.2))))
            finally:
                self.open_now -= 1
            return web.json_response({"slept": body.get("seconds", 0.2), "prompt": body.get("prompt")})
        if mode == "until_released":  # GPU work that ends when the test says so
            await self._work(key, self.release.wait)
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
            self.endless_sent[key] = 0
            while True:
                await stream.write(chunk)
                self.endless_sent[key] += len(chunk)
        if mode == "gzip_bomb":  # a small body that inflates to `mib` MiB
            inflated = int(body.get("mib", 256)) << 20
            packer = zlib.compressobj(9, zlib.DEFLATED, 31)
            bomb = packer.compress(b"[" + b"0," * (inflated // 2)) + packer.compress(b"0]") + packer.flush()
            return web.Response(
                body=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
            )
        if mode == "redirect":
            raise web.HTTPSeeOther(f"/result/{body.get('hops', 1)}")
        if mode == "offsite":
            raise web.HTTPSeeOther("http://example.invalid/result")
        return web.json_response({"echo": body, "job": request.headers.get("X-Runner-Job-Id")})

    async def _result(self, request: web.Request) -> web.Response:
        hops = int(request.match_info["token"])
        if hops > 1:  # a result URL that redirects to itself while the work goes on
            raise web.HTTPSeeOther(f"/result/{hops - 1}")
        return web.json_response({"result": "done"})

    async def _url_cancel(self, request: web.Request) -> web.Response:
        execution_id = request.match_info["execution_id"]
        self.url_cancels.append(execution_id)
        self._note(self.url_cancel_at, execution_id)
        self.url_cancelled[execution_id].set()
        await asyncio.sleep(self.url_cancel_delay_s)
        if self.url_cancel_reply is not None:
            status, raw, headers = self.url_cancel_reply
            return web.Response(status=status, body=raw, content_type="application/json", headers=headers)
        return web.json_response({"cancelled": execution_id})

    # -- Modal ----------------------------------------------------------------------------------

    async def _modal_start(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """A Modal web endpoint: the call runs on Modal, not in this request."""
        call_id = f"fc-{next(self._call_ids):012d}"

        async def function() -> Any:
            if body.get("until_released"):
                await self.release.wait()
            else:
                await asyncio.sleep(float(body.get("seconds", 0)))
            return {"result": body.get("prompt", "done"), "call": call_id}

        call = ModalCall(call_id, body, asyncio.create_task(function(), name=f"modal-{call_id}"))
        call.task.add_done_callback(lambda _t: self.touch())
        self.modal_calls[call_id] = call
        self.touch()
        return await self._modal_wait(request, call)

    async def _modal_wait(self, request: web.Request, call: ModalCall) -> web.StreamResponse:
        # A closed connection cancels this wait only: the call itself goes on (shield).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(call.task), self.modal_cut_s)
        if not call.task.done():
            location = f"{request.path}?{CALL_ID}={call.id}"
            raise web.HTTPSeeOther(location)
        if call.consumed:
            # "it may not be accessed again": the form of that refusal is not documented (composed).
            return web.json_response({"detail": "the result was already fetched"}, status=404)
        call.consumed = True
        if call.cancelled or call.task.cancelled():  # not documented (composed)
            return web.json_response({"detail": "the function call was cancelled"}, status=500)
        return web.json_response(call.task.result())

    async def _modal_result(self, request: web.Request) -> web.StreamResponse:
        call = self.modal_calls.get(request.query.get(CALL_ID, ""))
        if call is None:  # composed
            return web.json_response({"detail": "unknown function call"}, status=404)
        return await self._modal_wait(request, call)

    async def _modal_cancel(self, request: web.Request) -> web.Response:
        """The user's endpoint: modal.FunctionCall.from_id(call_id).cancel()."""
        call_id = request.match_info["call_id"]
        self.modal_cancels.append(call_id)
        self.touch()
        call = self.modal_calls.get(call_id)
        if call is None:
            return web.json_response({"detail": "unknown function call"}, status=404)
        call.cancelled = True
        call.task.cancel()
        return web.json_response({"cancelled": call_id})
