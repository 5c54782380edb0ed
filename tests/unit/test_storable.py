"""The request and reply parser (runner.storable): properties over generated input.
(Postgres judges what it accepts in tests/integration/test_storable_pg.py.)"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner import storable
from runner.errors import InvalidJson, Unstorable

# Text as it may arrive: any code point, lone surrogates and NUL included.
texts = st.text(
    alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF, categories=None), max_size=12
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=True, allow_infinity=True)
)
values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=30,
)


def _at(value: Any, path: str) -> Any:
    """The value a path of check()'s names (the JSON text re-parsed by the standard library)."""
    tokens = json.loads("[" + ",".join(_tokens(path[1:])) + "]")
    for token in tokens:
        value = value[token]
    return value


def _tokens(rest: str) -> list[str]:
    out = []
    while rest:
        if rest.startswith("."):
            name = rest[1:].split(".")[0].split("[")[0]
            out.append(json.dumps(name))
            rest = rest[1 + len(name) :]
        elif rest[1] == '"':  # ["key"]: the key is JSON text, read as such
            key, end = json.JSONDecoder().raw_decode(rest, 1)
            out.append(json.dumps(key))
            rest = rest[end + 1 :]
        else:  # [n]
            end = rest.index("]", 1)
            out.append(rest[1:end])
            rest = rest[end + 1 :]
    return out


def _bad(value: Any) -> bool:
    if isinstance(value, str):
        return storable.text_problem(value) is not None
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    return False


@settings(max_examples=400, deadline=None)
@given(values)
def test_accepted_values_are_storable_and_refusals_name_a_bad_place(value: Any) -> None:
    raw = json.dumps(value, ensure_ascii=True).encode()  # NaN, surrogates: what careless clients send
    try:
        parsed = storable.loads(raw)
    except Unstorable as exc:
        refused: Unstorable | None = exc
    else:
        refused = None
    if refused is not None:
        if refused.path == "$" and "nested" in refused.problem:
            return
        target = _at(json.loads(raw), refused.path)
        if "key" in refused.problem:
            assert any(storable.text_problem(k) for k in target), (refused, target)
        else:
            assert _bad(target), (refused, target)
        return
    assert parsed == value or json.dumps(parsed) == json.dumps(value)
    json.dumps(parsed, allow_nan=False).encode("utf-8")  # finite, and encodable as UTF-8


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_either_parse_or_are_refused_cleanly(raw: bytes) -> None:
    with contextlib.suppress(InvalidJson, Unstorable):
        storable.loads(raw)


@given(st.integers(min_value=0, max_value=300), st.sampled_from(["[", '{"a":']))
def test_nesting_is_measured_before_parsing(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    raw = (opener * depth + "1" + closer * depth).encode()
    if depth > storable.MAX_DEPTH:
        with pytest.raises(Unstorable, match="nested deeper than 64"):
            storable.loads(raw)
    else:
        storable.loads(raw)
    assert storable.nesting(raw) == depth


def test_brackets_inside_strings_do_not_count() -> None:
    raw = json.dumps({"s": "[" * 1000, "t": '\\"[[[', "u": [["]]]]"]]}).encode()
    assert storable.nesting(raw) == 3
    storable.loads(raw)
