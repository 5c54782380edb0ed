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
import weakref
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

import orjson

from runner import jsontext
from runner.errors import InvalidJson, Unstorable
from runner.jsontext import BESIDE_THE_LOOP, INLINE_BYTES

MAX_DEPTH = 64
RULE = (
    "strings may not hold U+0000 or unpaired surrogates, numbers must be finite, "
    f"JSON may nest at most {MAX_DEPTH} levels"
)

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
_FAST_FROM = 1 << 14  # below this the standard library is as quick, and names what it refuses


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
        steps = list(accumulate(map(_STEP.__getitem__, brackets[start : start + _CHUNK]), initial=depth))
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


_NUL_ESCAPE = b"\\u0000"
_FEW = 256


def _holds_nul_escape(raw: bytes) -> bool:
    """Whether JSON text escapes a U+0000 (`\u0000` after an even number of backslashes);
    found with bytes.find, so as fast as memchr. Past a few look-alikes (`\\u0000`, an
    escaped backslash), say yes: the caller then walks the value and knows."""
    at = raw.find(_NUL_ESCAPE)
    for _ in range(_FEW):
        if at == -1:
            return False
        start = at
        while start and raw[start - 1] == 0x5C:  # the backslashes before it
            start -= 1
        if (at - start) % 2 == 0:
            return True
        at = raw.find(_NUL_ESCAPE, at + 1)
    return True


def _storable_text(raw: bytes) -> bool:
    """Whether JSON text that orjson read holds only what Postgres can store -- decided on the
    text, at C speed: orjson refuses NaN, the infinities and lone surrogates itself, so what
    is left is the depth and an escaped U+0000."""
    return nesting(raw) <= MAX_DEPTH and not _holds_nul_escape(raw)


async def loads_async(raw: bytes) -> Any:
    """loads(), keeping the event loop free however big the text: orjson reads it (a few
    milliseconds a MiB) and its text is checked at C speed; what orjson will not read, or
    what fails those checks, takes the standard library beside the loop (to name the
    problem and where)."""
    if len(raw) >= _FAST_FROM:
        value = jsontext.fast_loads(raw)
        if value is not jsontext.NOT_FAST and _storable_text(raw):
            return value
    if len(raw) <= INLINE_BYTES:
        return loads(raw)
    value = await asyncio.get_running_loop().run_in_executor(BESIDE_THE_LOOP, parse, raw)
    await check_async(value, dumped=False)
    return value


async def check_async(value: Any, *, dumped: bool = True) -> None:
    """check(), keeping the event loop free: the value is written out by orjson and the text
    checked at C speed (values parsed by loads_async cannot hold NaN, which orjson would write
    as null); else -- `dumped` False, or orjson refuses it -- walked a step at a time, one
    walk at a time, letting other work run between the steps (a thread would not do: a walk
    is Python code, and a thread holding the GIL makes every wake of the loop wait)."""
    if dumped:
        try:
            if _storable_text(orjson.dumps(value)):
                return
        except TypeError:  # a lone surrogate, an integer past 64 bits: walk it to know
            pass
    async with _walking():
        for _ in _checking(value, "$", MAX_DEPTH):
            await asyncio.sleep(0)


_WALKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _walking() -> asyncio.Semaphore:
    """One walk at a time on a loop: 20 walks taking turns would each add their step to
    every turn of the loop."""
    loop = asyncio.get_running_loop()
    walks = _WALKS.get(loop)
    if walks is None:
        walks = _WALKS[loop] = asyncio.Semaphore(1)
    return walks


async def parse_async(raw: bytes) -> Any:
    """parse() (no check: text read, not stored), keeping the event loop free."""
    if len(raw) >= _FAST_FROM:
        value = jsontext.fast_loads(raw)
        if value is not jsontext.NOT_FAST and nesting(raw) <= MAX_DEPTH:
            return value
    if len(raw) <= INLINE_BYTES:
        return parse(raw)
    return await asyncio.get_running_loop().run_in_executor(BESIDE_THE_LOOP, parse, raw)


# A path is built only for the error message: meanwhile it is a chain (parent, key).
_Path = str | tuple[Any, str | int]
_VALUES_A_STEP = 4096  # values looked at between two steps of check_async


def check(value: Any, path: str = "$", *, max_depth: int = MAX_DEPTH) -> None:
    """Raise Unstorable for the first string (keys included), number or nesting in `value`
    that Postgres would refuse, naming its path."""
    for _ in _checking(value, path, max_depth):
        pass


def _checking(value: Any, path: str, max_depth: int) -> Iterator[None]:
    """check(), yielding every _VALUES_A_STEP values."""
    _scalar(value, path)
    stack: list[tuple[Any, _Path, int]] = [(value, path, 0)] if isinstance(value, dict | list) else []
    while stack:
        item, where, depth = stack.pop()
        if depth >= max_depth:
            raise Unstorable(_path(where), f"JSON nested deeper than {max_depth} levels")
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
        for seen, (key, child) in enumerate(children, 1):
            if isinstance(child, dict | list):
                nested.append((child, (where, key), depth + 1))
            elif not (child is None or child is True or child is False or type(child) is int):
                _scalar(child, (where, key))
            if not seen % _VALUES_A_STEP:
                yield
        stack.extend(reversed(nested))
        yield


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
