"""structlog set-up: JSON lines by default, a console renderer on a TTY.

Logging sits on the cancel path (a line per stopped task), so this follows structlog's
performance advice: loggers are assembled once and cached, and JSON is rendered to bytes by
orjson and written without an encode step.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog


def _dumps(obj: Any, **kwargs: Any) -> bytes:
    """orjson, or the standard library for what orjson refuses (integers past 64 bits):
    a log line is never lost to its serializer."""
    try:
        return orjson.dumps(obj, **kwargs)
    except TypeError:
        return json.dumps(obj, default=str).encode()


def _dumps_str(obj: Any, **kwargs: Any) -> str:
    return _dumps(obj, **kwargs).decode()


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    processors: list[structlog.typing.Processor]
    logger_factory: Callable[..., Any]
    binary = getattr(sys.stderr, "buffer", None)  # absent when stderr is replaced by a text stream
    if fmt == "console":
        # The console renderer formats exceptions itself.
        processors = [*shared, structlog.dev.ConsoleRenderer()]
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    elif binary is not None:
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ]
        logger_factory = structlog.BytesLoggerFactory(binary)
    else:
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps_str),
        ]
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the standard library (pgserver, asyncio) stay quiet
    # unless something is wrong.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
