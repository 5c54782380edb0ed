"""The JSON log format: one object per line, whatever the values (run in a child process,
because structlog's configuration is process-wide and cached)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import uuid, datetime, structlog
from runner.logs import configure_logging
configure_logging("json")
log = structlog.get_logger("t").bind(job_id=uuid.UUID(int=1), wallet="0xabc")
log.info("job_started", at=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC))
log.info("huge_number", n=10**30)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("job_crashed")
log.debug("hidden")
"""


def test_json_lines_with_bound_fields_big_numbers_and_tracebacks() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60, check=True)
    lines = [json.loads(line) for line in proc.stderr.decode().splitlines()]
    assert [line["event"] for line in lines] == ["job_started", "huge_number", "job_crashed"]
    started, huge, crashed = lines
    assert started["job_id"] == "00000000-0000-0000-0000-000000000001" and started["wallet"] == "0xabc"
    assert started["at"] == "2026-01-02T03:04:05+00:00" and started["level"] == "info"
    assert started["timestamp"].endswith("Z")
    assert huge["n"] == 10**30 and huge["job_id"] == started["job_id"]
    assert crashed["level"] == "error" and "ZeroDivisionError" in crashed["exception"]
