"""Request bodies and reply values shared by the routes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from api.errors import BadRequest, UnsupportedMediaType
from runner import jsontext, storable
from runner.errors import InvalidJson, Unstorable
from runner.timeutil import iso

__all__ = ["BIG_BODIES", "READ_TIMEOUT_S", "big_body_middleware", "iso", "json_reply", "read_json_object"]

READ_TIMEOUT_S = web.AppKey("read_timeout_s", float)
BIG_BODY_BYTES = 1 << 16
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Requests with big bodies are handled two at a time: each holds the event loop for a few
# milliseconds a MiB at several steps (parse, store, answer), and twenty at once made the
# loop's every turn that much longer.
BIG_BODIES = web.AppKey("big_bodies", asyncio.Semaphore)


@web.middleware
async def big_body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if (request.content_length or 0) <= BIG_BODY_BYTES and request.headers.get("Transfer-Encoding") is None:
        return await handler(request)
    async with request.app[BIG_BODIES]:
        return await handler(request)


async def read_json_object(
    request: web.Request, *, required: bool = True, stored: bool = True
) -> dict[str, Any]:
    """The body as a JSON object, its nesting bounded before parsing; with `stored` (what the
    body says will be written), one that Postgres can store (runner.storable). 415 for
    another media type, 400 for anything malformed, unstorable, or not sent in time."""
    limit_s = request.app[READ_TIMEOUT_S]
    try:
        async with asyncio.timeout(limit_s):
            raw = await request.read()  # over client_max_size: 413, rendered by the error middleware
    except TimeoutError:
        raise BadRequest(f"the request body did not arrive within {limit_s:g} s") from None
    except RequestPayloadError as exc:  # e.g. a Content-Encoding the body does not follow
        raise BadRequest(f"the request body could not be read: {exc.__cause__ or exc}") from None
    if not raw.strip():
        if required:
            raise BadRequest("the request body is empty; expected a JSON object")
        return {}
    ctype = request.content_type
    if ctype not in ("application/json", "application/octet-stream") and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"expected Content-Type application/json, got {ctype}")
    try:
        body = await (storable.loads_async(raw) if stored else storable.parse_async(raw))
    except InvalidJson as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except Unstorable as exc:
        raise BadRequest(f"the body cannot be stored: {exc} ({storable.RULE})") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def json_reply(body: Any, status: int = 200) -> web.Response:
    """A JSON answer, rendered with orjson (a listing of big jobs took the standard library
    tens of milliseconds of the event loop)."""
    return web.Response(body=jsontext.dumps_bytes(body), status=status, content_type="application/json")
