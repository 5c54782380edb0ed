"""JSON text in and out of Postgres and the API, fast where it is big.

asyncpg's codecs run on the event loop, as does rendering a reply: with the standard library a
job of 1 MiB of small items held the loop ~80 ms each way. orjson does it in a few, but it
reads integers past 64 bits as floats and refuses to write them; those (rare) texts take the
standard library, so that no number is ever changed.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

_SMALL = 1 << 14
# Texts above this are decoded beside the event loop, on one thread (so that the loop waits
# for the GIL only a switch interval at a time).
INLINE_BYTES = 1 << 16
BESIDE_THE_LOOP = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner-json")
# Digits to 1, everything else to 0: a run of 19 ones marks an integer orjson may not keep.
_DIGITS = bytes(1 if chr(b).isdigit() and b < 128 else 0 for b in range(256))
_LONG_DIGIT_RUN = b"\x01" * 19


NOT_FAST = object()


def fast_loads(raw: bytes) -> Any:
    """orjson's reading of `raw` (a few ms a MiB, bounded depth), or NOT_FAST where it may
    differ from the standard library's (an integer past 64 bits) or refuses the text (NaN,
    1e400, a lone surrogate, not JSON at all): the caller then takes the standard library."""
    if _LONG_DIGIT_RUN in raw.translate(_DIGITS):
        return NOT_FAST
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return NOT_FAST


def loads(text: str | bytes) -> Any:
    if len(text) < _SMALL:
        return json.loads(text)
    raw = text.encode() if isinstance(text, str) else text
    value = fast_loads(raw)
    return json.loads(raw) if value is NOT_FAST else value


def dumps_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer past 64 bits, a key that is not a string
        return json.dumps(value, separators=(",", ":")).encode()


def dumps(value: Any) -> str:
    return dumps_bytes(value).decode()


async def loads_async(text: str | bytes) -> Any:
    """loads(), beside the event loop when the text is big."""
    if len(text) <= INLINE_BYTES:
        return loads(text)
    return await asyncio.get_running_loop().run_in_executor(BESIDE_THE_LOOP, loads, text)
