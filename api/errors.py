"""API errors: one hierarchy, turned into the JSON error shape by one middleware."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from runner import errors as runner_errors
from runner.db import is_transient

log = structlog.get_logger("api")

# Request ids: this process's random prefix and a counter (unique without a getrandom()
# call and a UUID per request).
_REQUEST_ID_PREFIX = secrets.token_hex(6)
_request_numbers = itertools.count(1)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra


class BadRequest(ApiError):
    status, code = 400, "invalid_request"


class Unauthenticated(ApiError):
    status, code = 401, "unauthenticated"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class TooManyRequests(ApiError):
    status, code = 429, "rate_limited"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


# Domain errors raised below the API, and the HTTP status each one answers with.
_RUNNER_STATUS: dict[type[runner_errors.JobError], int] = {
    runner_errors.JobNotFound: 404,
    runner_errors.JobForbidden: 403,
    runner_errors.NotCancellable: 409,
    runner_errors.NotRerunnable: 409,
    runner_errors.IdempotencyConflict: 409,
    runner_errors.QuotaExceeded: 429,
    runner_errors.RateExceeded: 429,
    runner_errors.UnknownBackend: 400,
    runner_errors.JobError: 400,
}

_HTTP_CODES = {
    404: ("not_found", "no such route"),
    405: ("method_not_allowed", "method not allowed on this route"),
    413: ("payload_too_large", "the request body is larger than 1 MiB"),
    415: ("unsupported_media_type", "expected application/json"),
}


def error_response(http_status: int, code: str, message: str, /, **extra: Any) -> web.Response:
    """The JSON error shape; `extra` fields (such as "status") are added to it."""
    body = {"ok": False, "error": code, "message": message, **extra}
    return web.json_response(body, status=http_status, dumps=json.dumps)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON; an unexpected one is logged with its trace, never shown."""
    request_id = request.headers.get("X-Request-Id") or f"{_REQUEST_ID_PREFIX}-{next(_request_numbers):x}"
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message, **exc.extra)
    except runner_errors.JobError as exc:
        status = next(s for t, s in _RUNNER_STATUS.items() if isinstance(exc, t))
        response = error_response(status, exc.code, exc.message, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, ("invalid_request", exc.reason))
        response = error_response(exc.status, code, message)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:
        if is_transient(exc):
            # Unreachable, restarting, or cut off mid-statement: not a bug, and the client may
            # retry (every write is a single conditional transaction).
            log.warning("database_unavailable", method=request.method, path=request.path, error=repr(exc))
            response = error_response(503, "unavailable", "the database did not answer; try again")
        else:
            log.exception("unhandled_error", method=request.method, path=request.path)
            response = error_response(500, "internal_error", "internal error; it has been logged")
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    return response
