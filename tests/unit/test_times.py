"""Times are parsed from ASCII digits only: a regex's \\d, and int(), also read other scripts'
digits ('٢٠٢٦' is 2026), which would let two different texts name the same time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runner import siwe
from runner.timeutil import parse_iso

# Arabic-Indic, Extended Arabic-Indic, Devanagari, full-width: all str.isdigit(), all int()-able.
SCRIPTS = ["\u0660", "\u06f0", "\u0966", "\uff10"]


def _in(script_zero: str, text: str) -> str:
    zero = ord(script_zero)
    return text.translate({ord(str(d)): chr(zero + d) for d in range(10)})


@pytest.mark.parametrize("zero", SCRIPTS)
@pytest.mark.parametrize(
    "text", ["2026-01-02T03:04:05Z", "2026-01-02T03:04:05.678Z", "2026-01-02T03:04:05+01:00"]
)
def test_siwe_times_take_ascii_digits_only(zero: str, text: str) -> None:
    assert siwe.parse_time(text) is not None
    for i, ch in enumerate(text):
        if ch.isdigit():  # one foreign digit anywhere is enough to refuse it
            hostile = text[:i] + _in(zero, ch) + text[i + 1 :]
            assert int(_in(zero, ch)) == int(ch)
            with pytest.raises(ValueError, match="RFC 3339"):
                siwe.parse_time(hostile)


@pytest.mark.parametrize("zero", SCRIPTS)
def test_query_times_take_ascii_digits_only(zero: str) -> None:
    assert parse_iso("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_iso("2026-01-02") == datetime(2026, 1, 2, tzinfo=UTC)
    for text in ("2026-01-02T03:04:05Z", "2026-01-02"):
        with pytest.raises(ValueError, match="ISO 8601"):
            parse_iso(_in(zero, text))
