"""Postgres behind a pooler (SPEC section 2): a transaction-mode PgBouncer eats LISTEN/NOTIFY,
so `runner serve` refuses it at start-up with one line; a session-mode one is fine. The
notification queue's fill is on /metrics."""

from __future__ import annotations

import aiohttp
import pytest

from runner.config import Settings
from runner.errors import StartupError
from runner.runtime import Runtime
from runner.service import running_service
from tests.pgbouncer import pgbouncer
from tests.procs import ServeProcess


def _said(proc: ServeProcess) -> list[str]:
    return [line["text"] for line in proc.events("raw") if str(line.get("text", "")).startswith("runner: ")]


async def test_serve_refuses_a_transaction_mode_pooler(dsn: str) -> None:
    async with pgbouncer(dsn, "transaction") as pooled:
        proc = await ServeProcess(pooled).start(ready_event=None)
        code = await proc.wait(timeout=90)
    said = _said(proc)
    assert code != 0, proc.logs[-10:]
    assert len(said) == 1, proc.logs[-10:]
    assert "transaction-mode pooler" in said[0] and "PgBouncer" in said[0], said
    assert "fly mpg attach" in said[0] and "direct" in said[0], said
    assert not proc.events("api_listening")
    assert not any("Traceback" in str(line) for line in proc.logs)


async def test_serve_runs_behind_a_session_mode_pooler(dsn: str) -> None:
    async with pgbouncer(dsn, "session") as pooled:
        proc = await ServeProcess(pooled).start()
        try:
            await proc.wait_log("notify_self_test_passed")
            async with aiohttp.ClientSession() as http, http.get(f"{proc.base_url}/readyz") as resp:
                assert resp.status == 200
        finally:
            await proc.stop()
        assert proc.proc is not None and proc.proc.returncode == 0


async def test_start_up_stops_when_its_own_notification_never_arrives(
    dsn: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a transaction-mode pooler does to the listener, without one: nothing reaches it."""
    from runner.db import listener

    monkeypatch.setattr(listener.Listener, "_dispatch", lambda *_args: None)
    monkeypatch.setattr(listener, "SELF_TEST_TIMEOUT_S", 0.5)
    with pytest.raises(StartupError) as raised:
        async with running_service(settings, dsn=dsn):
            pytest.fail("started")
    message = str(raised.value)
    assert "\n" not in message and "transaction-mode pooler" in message and "fly mpg attach" in message


async def test_notify_queue_usage_is_on_metrics(service: Runtime, base_url: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    lines = [line for line in text.splitlines() if line.startswith("runner_notify_queue_usage ")]
    assert len(lines) == 1, text[-2000:]
    assert 0.0 <= float(lines[0].split()[1]) < 0.01
