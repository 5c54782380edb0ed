"""JSON text in and out of Postgres and the API, fast where it is big.

asyncpg's codecs run on the event loop, as does rendering a reply: with the standard library a
job of 1 MiB of small items held the loop ~80 ms each way. orjson does it in a few, but it
reads integers past 64 bits as floats and refuses to write them; those (rare) texts take the
standard library, so that no number is ever changed.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_SMALL = 1 << 14
# Digits to 1, everything else to 0: a run of 19 ones marks an integer orjson may not keep.
_DIGITS = bytes(1 if chr(b).isdigit() and b < 128 else 0 for b in range(256))
_LONG_DIGIT_RUN = b"\x01" * 19


def loads(text: str | bytes) -> Any:
    if len(text) < _SMALL:
        return json.loads(text)
    raw = text.encode() if isinstance(text, str) else text
    if _LONG_DIGIT_RUN in raw.translate(_DIGITS):
        return json.loads(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # e.g. 1e400, which the standard library reads as inf
        return json.loads(raw)


def dumps_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer past 64 bits, a key that is not a string
        return json.dumps(value, separators=(",", ":")).encode()


def dumps(value: Any) -> str:
    return dumps_bytes(value).decode()
