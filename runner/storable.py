"""What Postgres can store (strings without U+0000 or unpaired surrogates,
finite numbers, JSON nested at most 64 levels), checked once where JSON enters the service:
request bodies and backend replies.

`text` and `jsonb` refuse U+0000 and unpaired surrogates, `jsonb` refuses NaN and the
infinities, and Postgres' own stack bounds nesting. Anything the service accepts must be
storable, or a write fails later -- after work was done, for a reason no retry mends.

Parsing is bounded before any recursion: the nesting depth is measured on the raw bytes
first, so the interpreter's recursion limit (which dependencies raise: py_ecc sets 100,000,
past the C stack) never decides whether the process survives a request.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from runner.errors import InvalidJson, Unstorable

MAX_DEPTH = 64
RULE = ("strings may not hold U+0000 or unpaired surrogates, numbers must be finite, "
        f"JSON may nest at most {MAX_DEPTH} levels")

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def nesting(raw: bytes) -> int:
    """How deeply the JSON text nests arrays and objects (an upper bound for text that is not
    JSON at all); C-speed: strings dropped by a regex, the rest reduced to its brackets."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) <= 1:
        return len(brackets)
    return max(accumulate(map(_STEP.__getitem__, brackets)))


def parse(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text with its nesting bounded: InvalidJson when it is not JSON, Unstorable
    when it nests deeper than `max_depth`. NaN and lone surrogates are let through, so that
    check() can name where they are."""
    if nesting(raw) > max_depth:
        raise Unstorable("$", f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(str(exc)) from None


def loads(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text into a value Postgres can store: InvalidJson when it is not JSON,
    Unstorable (naming where) when it holds what cannot be stored."""
    value = parse(raw, max_depth=max_depth)
    check(value, max_depth=max_depth)
    return value


def check(value: Any, path: str = "$", *, max_depth: int = MAX_DEPTH) -> None:
    """Raise Unstorable for the first string (keys included), number or nesting in `value`
    that Postgres would refuse, naming its path."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                raise Unstorable(where, problem)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise Unstorable(where, _number_name(item))
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise Unstorable(where, f"JSON nested deeper than {max_depth} levels")
            if isinstance(item, list):
                stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in reversed(list(enumerate(item))))
                continue
            children = []
            for key, v in item.items():
                if not isinstance(key, str):
                    raise Unstorable(where, f"a key that is not a string: {key!r}")
                problem = text_problem(key)
                if problem:
                    raise Unstorable(where, f"a key holding {problem}")
                children.append((v, child_path(where, key), depth + 1))
            stack.extend(reversed(children))
        elif not (item is None or isinstance(item, bool | int)):
            raise Unstorable(where, f"a value of type {type(item).__name__}")


def child_path(parent: str, key: str) -> str:
    return f"{parent}.{key}" if _IDENTIFIER.fullmatch(key) else f"{parent}[{json.dumps(key)}]"


def text_problem(text: str) -> str | None:
    """Why Postgres' text type would refuse `text`, or None."""
    if "\x00" in text:
        return "U+0000 (NUL)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "an unpaired surrogate"
    return None


def readable(text: str, limit: int = 2000) -> str:
    """Free text from outside, kept for people to read (error texts, cancel answers): escaped
    where Postgres would refuse it, and cut to `limit` characters -- never refused."""
    if text_problem(text):
        text = text.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
