"""Hostile input and poisoned replies: nothing a client or a backend sends can crash the
service, stall it, or make it call a backend twice for the same work."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from runner.config import Settings
from runner.fakes import FakeProviders
from runner.runtime import Runtime
from tests.client import Api
from tests.conftest import Cluster
from tests.procs import ServeProcess
from tests.wallets import Wallet


async def _raw_post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.post(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    ) as resp:
        return resp.status, await resp.json()


async def _raw_request(port: int, head: bytes) -> bytes:
    """Send bytes as they are (headers aiohttp's client would refuse to encode); the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


# -- bounded parsing, in a real `runner serve` -------------------------------------------------


async def test_deep_json_does_not_kill_the_process(dsn: str, http: aiohttp.ClientSession) -> None:
    """eth-account's py_ecc raises the recursion limit to 100,000 at import: a recursive JSON
    parser then overflows the C stack and the process dies (every JSON route, no session)."""
    serve = await ServeProcess(dsn).start()
    try:
        deep = b'{"message": ' + b"[" * 100_000
        for path in ("/auth/login", "/jobs"):
            status, body = await _raw_post(
                http, serve.base_url + path, deep, headers={"Authorization": "Bearer x"}
            )
            assert status in (400, 401), body
            if path == "/auth/login":
                assert body["error"] == "invalid_request" and "64" in body["message"], body
        async with http.get(serve.base_url + "/healthz") as resp:
            assert resp.status == 200
        assert serve.alive
    finally:
        await serve.stop()


# -- storable input: every field, every poison -------------------------------------------------

STRING_POISONS = {"nul": '"a\\u0000b"', "surrogate": '"x\\ud800y"'}
NUMBER_POISONS = {"nan": "NaN", "infinity": "Infinity", "minus_infinity": "-Infinity", "overflow": "1e309"}


def _submit(where: str, poison: str) -> tuple[str, str]:
    """A submit body with `poison` (raw JSON) at `where`; the path the message must name."""
    parts = {
        "name": ('{"executions": [{"backend": "demo", "name": @}]}', "$.executions[0].name"),
        "backend": ('{"executions": [{"backend": @}]}', "$.executions[0].backend"),
        "input": (
            '{"executions": [{"backend": "demo", "input": {"seconds": 0, "p": @}}]}',
            "$.executions[0].input.p",
        ),
        "input_list": (
            '{"executions": [{"backend": "demo", "input": [1, [@]]}]}',
            "$.executions[0].input[1][0]",
        ),
        "metadata": ('{"executions": [{"backend": "demo"}], "metadata": {"m": {"k": @}}}', "$.metadata.m.k"),
        "timeout": ('{"executions": [{"backend": "demo"}], "timeout_s": @}', "$.timeout_s"),
    }
    template, path = parts[where]
    return template.replace("@", poison), path


@pytest.mark.parametrize("poison", list(STRING_POISONS))
@pytest.mark.parametrize("where", ["name", "backend", "input", "input_list", "metadata"])
async def test_unstorable_strings_in_a_submit_are_400_naming_the_field(
    api: Api, where: str, poison: str
) -> None:
    body, path = _submit(where, STRING_POISONS[poison])
    status, reply = await _raw_post(api.http, api.base + "/jobs", body.encode(), api.headers)
    assert status == 400 and reply["error"] == "invalid_request", reply
    assert path in reply["message"], reply


@pytest.mark.parametrize("poison", list(STRING_POISONS))
async def test_unstorable_keys_are_400_naming_the_field(api: Api, poison: str) -> None:
    key = STRING_POISONS[poison]
    for body, path in [
        (f'{{"executions": [{{"backend": "demo"}}], "metadata": {{{key}: 1}}}}', "$.metadata"),
        (
            f'{{"executions": [{{"backend": "demo", "input": {{"a": {{{key}: 1}}}}}}]}}',
            "$.executions[0].input.a",
        ),
    ]:
        status, reply = await _raw_post(api.http, api.base + "/jobs", body.encode(), api.headers)
        assert status == 400 and reply["error"] == "invalid_request", reply
        assert path in reply["message"] and "key" in reply["message"], reply


@pytest.mark.parametrize("poison", list(NUMBER_POISONS))
@pytest.mark.parametrize("where", ["input", "metadata", "timeout"])
async def test_unstorable_numbers_are_400_naming_the_field(api: Api, where: str, poison: str) -> None:
    body, path = _submit(where, NUMBER_POISONS[poison])
    status, reply = await _raw_post(api.http, api.base + "/jobs", body.encode(), api.headers)
    assert status == 400 and reply["error"] == "invalid_request", reply
    assert path in reply["message"], reply


async def test_deep_input_is_400(api: Api) -> None:
    body = b'{"executions": [{"backend": "demo", "input": ' + b"[" * 20_000 + b"]" * 20_000 + b"}]}"
    status, reply = await _raw_post(api.http, api.base + "/jobs", body, api.headers)
    assert status == 400 and reply["error"] == "invalid_request" and "64" in reply["message"], reply
    # 64 levels in all is fine: the body's own two, and 62 of input.
    ok = b'{"executions": [{"backend": "demo", "input": ' + b"[" * 61 + b"]" * 61 + b"}]}"
    status, reply = await _raw_post(api.http, api.base + "/jobs", ok, api.headers)
    assert status == 201, reply


@pytest.mark.parametrize("poison", list(STRING_POISONS))
async def test_unstorable_reasons_and_statuses_are_400(api: Api, poison: str) -> None:
    job = await api.submit({"backend": "demo", "input": {"seconds": 30}})
    execution = job["executions"][0]["id"]
    value = STRING_POISONS[poison]
    for path, body, named in [
        (f"/jobs/{job['id']}/cancel", f'{{"reason": {value}}}', "$.reason"),
        (f"/jobs/{job['id']}/executions/{execution}/cancel", f'{{"reason": {value}}}', "$.reason"),
        ("/jobs/cancel", f'{{"reason": {value}}}', "$.reason"),
        ("/jobs/cancel", f'{{"statuses": [{value}]}}', "$.statuses[0]"),
    ]:
        status, reply = await _raw_post(api.http, api.base + path, body.encode(), api.headers)
        assert status == 400 and reply["error"] == "invalid_request", (path, reply)
        assert named in reply["message"], (path, reply)
    assert (await api.job(job["id"]))["status"] in ("queued", "running")
    # A sign-in message is parsed, not stored: a poisoned one is malformed (the login's code).
    status, reply = await _raw_post(
        api.http, api.base + "/auth/login", f'{{"message": {value}, "signature": "0x00"}}'.encode()
    )
    assert status == 401 and reply["error"] == "invalid_message", reply


async def test_a_cursor_whose_time_overflows_is_400(api: Api) -> None:
    for stamp in ("0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"):
        cursor = base64.urlsafe_b64encode(f"{stamp}|{uuid.uuid4()}".encode()).decode().rstrip("=")
        status, reply = await api.call("GET", f"/jobs?cursor={cursor}")
        assert status == 400 and reply["error"] == "invalid_request", reply


async def test_tokens_and_cookies_that_are_not_utf8_are_401(service: Runtime) -> None:
    assert service.port is not None
    for header in (b"Authorization: Bearer \xff\xfeabc", b"Cookie: runner_session=\xff\xfeabc"):
        reply = await _raw_request(
            service.port, b"GET /jobs HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n"
        )
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        assert b'"unauthenticated"' in reply
    # A NUL is not HTTP at all: aiohttp's parser refuses the request before any handler.
    reply = await _raw_request(
        service.port, b"GET /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\x00b\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.0 400"), reply[:200]


async def test_a_chain_id_of_5000_digits_is_refused_not_a_500(api: Api, http: aiohttp.ClientSession) -> None:
    """More digits than int() converts (4,300): a ValueError, not a SiweError, unless bounded."""
    async with http.get(api.base + "/auth/nonce") as resp:
        nonce = (await resp.json())["nonce"]
    wallet = Wallet()
    text = wallet.message(nonce).to_text().replace("\nChain ID: 1\n", "\nChain ID: " + "9" * 5000 + "\n")
    assert "\nChain ID: " + "9" * 5000 + "\nNonce: " in text  # the message really carries it
    status, reply = await _raw_post(
        http, api.base + "/auth/login", json.dumps({"message": text, "signature": wallet.sign(text)}).encode()
    )
    assert status == 401 and reply["error"] in ("invalid_message", "invalid_chain"), reply
    assert "chain id" in reply["message"], reply


async def test_a_last_event_id_of_unicode_digits_is_400(api: Api) -> None:
    """'²'.isdigit() is true and int('²') raises: the id must be ASCII digits."""
    port = int(api.base.rsplit(":", 1)[1])
    head = (
        b"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + api.token.encode()
        + b"\r\nLast-Event-ID: \xc2\xb2\r\nConnection: close\r\n\r\n"
    )  # UTF-8 of '²'
    reply = await _raw_request(port, head)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    assert b'"invalid_request"' in reply and b"Last-Event-ID" in reply, reply[:300]
    # The query form (for clients that cannot set the header), Arabic-Indic digits too.
    for value in ("\u00b2", "\u0661\u0662"):
        status, body = await api.call("GET", "/events?last_event_id=" + value)
        assert status == 400 and body["error"] == "invalid_request", body


async def test_a_usage_window_before_year_one_is_400(api: Api) -> None:
    """The default window is the 30 days before `until`: from 10 January of year 1 that
    falls before datetime.min (an OverflowError in the subtraction)."""
    status, body = await api.call("GET", "/usage?until=0001-01-10T00:00:00Z")
    assert status == 400 and body["error"] == "invalid_request", body
    assert "'until'" in body["message"], body
    # A window given whole, that early, is fine.
    status, body = await api.call("GET", "/usage?since=0001-01-01T00:00:00Z&until=0001-01-10T00:00:00Z")
    assert status == 200 and body["jobs"] == 0, body


ARABIC_INDIC = str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")


async def test_a_sign_in_time_in_arabic_indic_digits_is_invalid_message(
    api: Api, http: aiohttp.ClientSession
) -> None:
    """RFC 3339 times are ASCII digits; a regex's \\d also takes '\u0662\u0660\u0662\u0666' (int() reads it as 2026)."""
    wallet = Wallet()
    now = datetime.now(UTC)
    for field in ("issued_at", "expiration_time", "not_before"):
        async with http.get(api.base + "/auth/nonce") as resp:
            nonce = (await resp.json())["nonce"]
        at = now + timedelta(minutes=5) if field == "expiration_time" else now - timedelta(minutes=1)
        hostile = at.isoformat(timespec="milliseconds").replace("+00:00", "Z").translate(ARABIC_INDIC)
        text = wallet.message(nonce, **{field: hostile}).to_text()
        assert hostile in text and not hostile.isascii()  # the message really carries it
        status, reply = await _raw_post(
            http,
            api.base + "/auth/login",
            json.dumps({"message": text, "signature": wallet.sign(text)}).encode(),
        )
        assert status == 401 and reply["error"] == "invalid_message", (field, reply)


async def test_query_times_in_arabic_indic_digits_are_400(api: Api) -> None:
    for name in ("since", "until"):
        value = "2026-01-01T00:00:00Z".translate(ARABIC_INDIC)
        status, body = await api.call("GET", f"/usage?{name}={value}")
        assert status == 400 and body["error"] == "invalid_request" and f"'{name}'" in body["message"], body


# -- validate before signalling ----------------------------------------------------------------


async def test_a_nul_reason_does_not_stop_a_running_job(api: Api, fake_gpu: FakeProviders) -> None:
    job = await api.submit({"backend": "gpu", "input": {"mode": "hold"}})
    execution = job["executions"][0]["id"]
    await asyncio.wait_for(fake_gpu.web.started[execution].wait(), 10)
    status, reply = await _raw_post(
        api.http, api.base + f"/jobs/{job['id']}/cancel", b'{"reason": "stop\\u0000now"}', api.headers
    )
    assert status == 400 and "$.reason" in reply["message"], reply
    assert not fake_gpu.web.closed[execution].is_set()  # the GPU call is still open
    assert (await api.job(job["id"]))["status"] == "running"
    status, reply = await api.cancel(job["id"], wait=True, reason="stop now")
    assert status == 200 and reply["previous_status"] == "running" and reply["stopped"] is True, reply
    await asyncio.wait_for(fake_gpu.web.closed[execution].wait(), 5)
    assert (await api.job(job["id"]))["cancel_reason"] == "stop now"


# -- poisoned replies fail one execution, once -------------------------------------------------

POISONED_REPLIES: dict[str, tuple[dict[str, Any], str]] = {
    "nan": ({"mode": "raw", "raw": '{"score": NaN}'}, "NaN at $.score"),
    "infinity": ({"mode": "raw", "raw": '{"x": [1e999]}'}, "at $.x[0]"),
    "nul": ({"mode": "raw", "raw": '{"s": "a\\u0000b"}'}, "at $.s"),
    "surrogate": ({"mode": "raw", "raw": '{"s": "\\udc00"}'}, "at $.s"),
    "deep": ({"mode": "raw", "raw": "[" * 5000 + "]" * 5000}, "64"),
    "4xx_with_nul": ({"mode": "raw", "status": 422, "raw": "bad<NUL>input<FF>"}, "HTTP 422"),
}


async def test_poisoned_replies_fail_their_execution_once_and_spare_the_rest(
    service: Runtime, http: aiohttp.ClientSession, base_url: str, fake_gpu: FakeProviders
) -> None:
    alice, bob = await Api.signed_in(http, base_url), await Api.signed_in(http, base_url)
    # Bob's ordinary jobs go in with Alice's poisoned ones, so that they share result batches.
    submitted = await asyncio.gather(
        *(alice.submit({"backend": "plain", "input": reply}) for reply, _ in POISONED_REPLIES.values()),
        *(bob.submit({"backend": "plain", "input": {"n": i}}) for i in range(20)),
    )
    poisoned, ordinary = submitted[: len(POISONED_REPLIES)], submitted[len(POISONED_REPLIES) :]
    for job, (_, expected) in zip(poisoned, POISONED_REPLIES.values(), strict=True):
        done = await alice.until(job["id"], "completed", "failed", "cancelled")
        execution = done["executions"][0]
        assert done["status"] == "failed" and execution["status"] == "failed", done
        assert expected in execution["error"], execution["error"]
        assert "\x00" not in execution["error"]
        assert fake_gpu.web.calls_for(execution["id"]) == 1
    for job in ordinary:
        done = await bob.until(job["id"], "completed", "failed", "cancelled")
        assert done["status"] == "completed", done
        assert fake_gpu.web.calls_for(done["executions"][0]["id"]) == 1
    events = [e["kind"] for e in (await alice.call("GET", f"/jobs/{poisoned[0]['id']}/audit"))[1]["events"]]
    assert "requeued" not in events and events.count("started") == 1, events


async def test_a_remote_cancel_answer_with_a_nul_is_recorded_readably(
    api: Api, fake_gpu: FakeProviders
) -> None:
    fake_gpu.web.url_cancel_reply = (422, b"not stopp\x00ed: \xff", {})  # a refusal, with a NUL byte
    job = await api.submit({"backend": "gpu", "input": {"mode": "hold"}})
    execution = job["executions"][0]["id"]
    await asyncio.wait_for(fake_gpu.web.started[execution].wait(), 10)
    status, _ = await api.cancel(job["id"])
    assert status == 200
    done = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] != "pending")
    assert done["executions"][0]["remote_cancel"] == "failed", done
    assert "\x00" not in done["executions"][0]["error"]
    [answer] = [
        e
        for e in (await api.call("GET", f"/jobs/{job['id']}/audit"))[1]["events"]
        if e["kind"] == "remote_cancel"
    ]
    assert "stopp" in answer["detail"]["answer"] and "\x00" not in answer["detail"]["answer"]
    assert fake_gpu.web.url_cancels == [execution]


# -- slow clients ------------------------------------------------------------------------------


async def test_half_a_request_is_not_held_open(cluster: Cluster, dsn: str, settings: Settings) -> None:
    runtime = await cluster.start("all", settings.replace(read_timeout_s=0.5))
    assert runtime.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(b"GET /heal")
        await writer.drain()
        # The server hangs up on its own; the test's own limit is far longer.
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


async def test_a_body_that_never_arrives_is_refused(cluster: Cluster, dsn: str, settings: Settings) -> None:
    runtime = await cluster.start("all", settings.replace(read_timeout_s=0.5))
    assert runtime.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.port)
    try:
        writer.write(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"mess'
        )
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(65536), 10)
        assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
        assert b"did not arrive" in reply
    finally:
        writer.close()


async def test_bodies_that_are_not_what_their_encoding_says_are_400(api: Api) -> None:
    import gzip

    # Connection: close -- aiohttp drops a connection whose body it could not decode.
    headers = {
        **api.headers,
        "Content-Encoding": "gzip",
        "Content-Type": "application/json",
        "Connection": "close",
    }
    async with api.http.post(api.base + "/jobs", data=b'{"executions": []}', headers=headers) as resp:
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"
    # A small gzip that inflates past the body limit: refused without inflating it all.
    bomb = gzip.compress(b'{"metadata": {"a": "' + b"x" * 20_000_000 + b'"}}')
    async with api.http.post(api.base + "/jobs", data=bomb, headers=headers) as resp:
        assert resp.status in (400, 413), await resp.text()
    assert (await api.call("GET", "/auth/me"))[0] == 200  # the instance is fine
