"""What Postgres can store (strings without U+0000 or unpaired surrogates,
finite numbers, JSON nested at most 64 levels), checked once where JSON enters the service:
request bodies and backend replies.

`text` and `jsonb` refuse U+0000 and unpaired surrogates, `jsonb` refuses NaN and the
infinities, and Postgres' own stack bounds nesting. Anything the service accepts must be
storable, or a write fails later -- after work was done, for a reason no retry mends.

Parsing is bounded before any recursion: the nesting depth is measured on the raw bytes
first, so the interpreter's recursion limit (which dependencies raise: py_ecc sets 100,000,
past the C stack) never decides whether the process survives a request.

Every step is linear in the input, whatever it holds, and big inputs are parsed and checked
on one thread beside the event loop (parse_async, check_async): a 1 MiB body must not hold
the loop for more than a few milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate
from typing import Any

from runner.errors import InvalidJson, Unstorable

MAX_DEPTH = 64
RULE = ("strings may not hold U+0000 or unpaired surrogates, numbers must be finite, "
        f"JSON may nest at most {MAX_DEPTH} levels")

# A JSON string, possessive so that nothing is tried twice; one left open runs to the end of
# the text (which is then no JSON anyway). With a closing quote required, a body of one `"`
# and many `\\"` made every quote start a scan to the end: quadratic, 1 MiB took an hour.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_CHUNK = 1 << 16
# Inputs above these sizes are parsed (or checked) beside the loop, not on it.
INLINE_BYTES = 1 << 16
INLINE_NODES = 20_000
_BESIDE_THE_LOOP = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner-json")


def nesting(raw: bytes, *, stop_above: int = MAX_DEPTH) -> int:
    """How deeply the JSON text nests arrays and objects (an upper bound for text that is not
    JSON at all; once past `stop_above`, any number above it). Linear, at C speed: strings
    dropped by a regex, the rest reduced to its brackets and summed a chunk at a time (so
    that a thread running it lets the event loop in between)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    opening = brackets.count(b"[") + brackets.count(b"{")
    if opening <= stop_above:
        return opening
    depth = deepest = 0
    for start in range(0, len(brackets), _CHUNK):
        steps = list(accumulate(map(_STEP.__getitem__, brackets[start:start + _CHUNK]), initial=depth))
        deepest, depth = max(deepest, max(steps)), steps[-1]
        if deepest > stop_above:
            break
    return deepest


def parse(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text with its nesting bounded: InvalidJson when it is not JSON, Unstorable
    when it nests deeper than `max_depth`. NaN and lone surrogates are let through, so that
    check() can name where they are."""
    if nesting(raw, stop_above=max_depth) > max_depth:
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


async def parse_async(raw: bytes, *, stored: bool = True) -> Any:
    """loads() (or, without `stored`, parse()) beside the event loop when `raw` is big."""
    fn = loads if stored else parse
    if len(raw) <= INLINE_BYTES:
        return fn(raw)
    return await asyncio.get_running_loop().run_in_executor(_BESIDE_THE_LOOP, fn, raw)


async def check_async(value: Any) -> None:
    """check(), moved beside the event loop once the value proves big."""
    try:
        check(value, budget=INLINE_NODES)
    except _OverBudget:
        await asyncio.get_running_loop().run_in_executor(_BESIDE_THE_LOOP, check, value)


class _OverBudget(Exception):
    pass


# A path is built only for the error message: meanwhile it is a chain (parent, key).
_Path = str | tuple[Any, str | int]


def check(value: Any, path: str = "$", *, max_depth: int = MAX_DEPTH, budget: int | None = None) -> None:
    """Raise Unstorable for the first string (keys included), number or nesting in `value`
    that Postgres would refuse, naming its path. With `budget`, _OverBudget once more than
    that many containers and values have been looked at."""
    _scalar(value, path)
    stack: list[tuple[Any, _Path, int]] = [(value, path, 0)] if isinstance(value, dict | list) else []
    seen = 0
    while stack:
        item, where, depth = stack.pop()
        if depth >= max_depth:
            raise Unstorable(_path(where), f"JSON nested deeper than {max_depth} levels")
        seen += len(item) + 1
        if budget is not None and seen > budget:
            raise _OverBudget
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise Unstorable(_path(where), f"a key that is not a string: {key!r}")
                problem = text_problem(key)
                if problem:
                    raise Unstorable(_path(where), f"a key holding {problem}")
            children: Any = item.items()
        else:
            children = enumerate(item)
        nested = []
        for key, child in children:
            if isinstance(child, dict | list):
                nested.append((child, (where, key), depth + 1))
            elif not (child is None or child is True or child is False or type(child) is int):
                _scalar(child, (where, key))
        stack.extend(reversed(nested))


def _scalar(item: Any, where: _Path) -> None:
    if isinstance(item, str):
        problem = text_problem(item)
        if problem:
            raise Unstorable(_path(where), problem)
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise Unstorable(_path(where), _number_name(item))
    elif not (item is None or isinstance(item, bool | int | dict | list)):
        raise Unstorable(_path(where), f"a value of type {type(item).__name__}")


def _path(where: _Path) -> str:
    keys: list[str | int] = []
    while isinstance(where, tuple):
        where, key = where
        keys.append(key)
    text = where
    for key in reversed(keys):
        text = f"{text}[{key}]" if isinstance(key, int) else child_path(text, key)
    return text


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
