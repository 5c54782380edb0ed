"""CORS for the portal origins of RUNNER_CORS_ORIGINS; other origins get no CORS headers."""

from __future__ import annotations

from aiohttp import web

from api.errors import Handler, error_response

ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key"
ALLOW_METHODS = "GET, POST, OPTIONS"
ORIGINS = web.AppKey("cors_origins", frozenset)


def _allowed(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin is not None and origin in request.app[ORIGINS] else None


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return await handler(request)
    origin = _allowed(request)
    if origin is None:
        return error_response(403, "forbidden", "this origin is not allowed (RUNNER_CORS_ORIGINS)")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        },
    )


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: covers streamed replies (SSE) and errors alike."""
    origin = _allowed(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = "X-Request-Id"
        response.headers.add("Vary", "Origin")


def setup_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    app[ORIGINS] = frozenset(origins)
    app.on_response_prepare.append(add_cors_headers)
