"""aioresponses for aiohttp >= 3.14.

aiohttp 3.14 (a security release) made `stream_writer` a required argument of
ClientResponse, and no aioresponses release passes it yet (upstream issue #289). This
supplies the one value it needs, for the mocked responses only.
"""

from __future__ import annotations

from typing import Any

import aioresponses.core
from aiohttp import ClientResponse


class _SentWriter:
    """A request that was fully sent: all ClientResponse reads of its writer."""

    output_size = 0


class _CompatResponse(ClientResponse):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentWriter())
        super().__init__(*args, **kwargs)


aioresponses.core.ClientResponse = _CompatResponse  # type: ignore[misc]
aioresponses_ = aioresponses.core.aioresponses

__all__ = ["aioresponses_"]
