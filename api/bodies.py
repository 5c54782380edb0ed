"""Request bodies and reply values shared by the routes."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from api.errors import BadRequest, UnsupportedMediaType
from runner.timeutil import iso

__all__ = ["iso", "read_json_object"]


async def read_json_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object; 415 for another media type, 400 for anything malformed."""
    raw = await request.read()  # over client_max_size: 413, rendered by the error middleware
    if not raw.strip():
        if required:
            raise BadRequest("the request body is empty; expected a JSON object")
        return {}
    ctype = request.content_type
    if ctype not in ("application/json", "application/octet-stream") and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"expected Content-Type application/json, got {ctype}")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
