"""Times as the API shows them (ISO 8601 UTC ending in Z), and as it reads them."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str, *, assume_utc: bool = True) -> datetime:
    """An ISO 8601 time (a date alone is its midnight), as an aware UTC datetime. A time
    without an offset is UTC, unless `assume_utc` is false: then it is refused."""
    # ASCII digits only: int() also reads other scripts' digits ('٢٠٢٦' is 2026). The C
    # fromisoformat refuses them today; the pure-Python one would not.
    if not text.isascii():
        raise ValueError(f"{text[:40]!r} is not an ISO 8601 time (ASCII digits)")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        if not assume_utc:
            raise ValueError(f"{text[:40]!r} has no UTC offset")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)  # OverflowError at the ends of the calendar
