"""The application's typed state keys."""

from __future__ import annotations

from aiohttp import web

from runner.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
