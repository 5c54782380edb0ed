from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from runner import siwe
from runner.config import Settings
from runner.db.notify import AUTH
from runner.runtime import Runtime
from runner.service import running_service
from tests.conftest import Cluster
from tests.wallets import CLIENT_MESSAGES, Wallet, _ts, get_nonce, login, sign_in


async def _refused(http: aiohttp.ClientSession, base: str, text: str, sig: str) -> str:
    status, body = await login(http, base, text, sig)
    assert status == 401, body
    assert body["ok"] is False and body["message"]
    code: str = body["error"]
    return code


async def _me(http: aiohttp.ClientSession, base: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{base}/auth/me", headers=headers) as resp:
        return resp.status


async def test_valid_login_opens_a_session(http: aiohttp.ClientSession, base_url: str) -> None:
    wallet = Wallet()
    nonce_reply = await (await http.get(f"{base_url}/auth/nonce")).json()
    assert nonce_reply["nonce"].isalnum() and len(nonce_reply["nonce"]) >= 8
    assert nonce_reply["expires_at"].endswith("Z")
    text = wallet.message(nonce_reply["nonce"]).to_text()
    status, body = await login(http, base_url, text, wallet.sign(text))
    assert status == 200
    assert body["address"] == wallet.address  # EIP-55 checksummed
    assert body["expires_at"].endswith("Z") and len(body["token"]) >= 32
    async with http.get(f"{base_url}/auth/me", headers={"Authorization": f"Bearer {body['token']}"}) as resp:
        assert resp.status == 200
        me = await resp.json()
    assert me == {"address": wallet.address, "admin": False, "expires_at": body["expires_at"]}


async def test_login_sets_the_session_cookie_for_get_only(http: aiohttp.ClientSession, base_url: str) -> None:
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base_url)).to_text()
    async with http.post(
        f"{base_url}/auth/login", json={"message": text, "signature": wallet.sign(text)}
    ) as resp:
        assert resp.status == 200
        cookie = resp.cookies["runner_session"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert not cookie["secure"]  # plain http, no https public URL: a browser would drop it
    assert cookie["max-age"] == "86400"
    assert cookie["path"] == "/"
    # The jar sends it back: GET works through the cookie alone...
    async with http.get(f"{base_url}/auth/me") as resp:
        assert resp.status == 200
        assert (await resp.json())["address"] == wallet.address
    # ...a state-changing route does not (CSRF).
    async with http.post(f"{base_url}/auth/ticket") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthenticated"


async def test_sign_out_takes_the_cookie_alone(http: aiohttp.ClientSession, base_url: str) -> None:
    """A reloaded page has its cookie but no token: it can still end its session."""
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base_url)).to_text()
    status, session = await login(http, base_url, text, wallet.sign(text))
    assert status == 200
    async with http.post(f"{base_url}/jobs", json={"executions": [{"backend": "demo"}]}) as resp:
        assert resp.status == 401  # other POSTs still need the header
    async with http.post(f"{base_url}/auth/logout") as resp:
        assert resp.status == 200, await resp.text()
    http.cookie_jar.clear()
    async with http.get(f"{base_url}/auth/me", cookies={"runner_session": session["token"]}) as me:
        assert me.status == 401


async def test_replayed_nonce_is_refused(http: aiohttp.ClientSession, base_url: str) -> None:
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base_url)).to_text()
    sig = wallet.sign(text)
    assert (await login(http, base_url, text, sig))[0] == 200
    assert await _refused(http, base_url, text, sig) == "invalid_nonce"


async def test_nonce_not_issued_here_is_refused(http: aiohttp.ClientSession, base_url: str) -> None:
    wallet = Wallet()
    text = wallet.message("NeverIssued123").to_text()
    assert await _refused(http, base_url, text, wallet.sign(text)) == "invalid_nonce"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"domain": "evil.example"}, "invalid_domain"),
        # Times relative to when the test runs (not to collection: a slow run passed them by).
        ({"expiration_time": timedelta(seconds=-1)}, "expired"),
        ({"issued_at": timedelta(minutes=5)}, "expired"),
        ({"not_before": timedelta(minutes=5)}, "expired"),
    ],
)
async def test_bad_message_is_refused_and_nonce_survives(
    http: aiohttp.ClientSession, base_url: str, overrides: dict[str, Any], code: str
) -> None:
    wallet = Wallet()
    nonce = await get_nonce(http, base_url)
    now = datetime.now(UTC)
    fields = {k: _ts(now + v) if isinstance(v, timedelta) else v for k, v in overrides.items()}
    bad = wallet.message(nonce, **fields).to_text()
    assert await _refused(http, base_url, bad, wallet.sign(bad)) == code
    # The nonce is consumed only when every check passes: it still works.
    good = wallet.message(nonce).to_text()
    assert (await login(http, base_url, good, wallet.sign(good)))[0] == 200


async def test_issued_at_within_skew_is_accepted(http: aiohttp.ClientSession, base_url: str) -> None:
    wallet = Wallet()
    issued = _ts(datetime.now(UTC) + timedelta(seconds=30))
    text = wallet.message(await get_nonce(http, base_url), issued_at=issued).to_text()
    assert (await login(http, base_url, text, wallet.sign(text)))[0] == 200


async def test_foreign_altered_and_malformed_signatures_are_refused(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    wallet, other = Wallet(), Wallet()
    text = wallet.message(await get_nonce(http, base_url)).to_text()
    assert await _refused(http, base_url, text, other.sign(text)) == "invalid_signature"
    altered = text.replace("Sign in to the runner.", "Sign in to the runner!")
    assert await _refused(http, base_url, altered, wallet.sign(text)) == "invalid_signature"
    for malformed in ("0x1234", "not hex", "0x" + "zz" * 65, "0x" + "00" * 65):
        assert await _refused(http, base_url, text, malformed) == "invalid_signature"
    assert (await login(http, base_url, text, wallet.sign(text)))[0] == 200


async def test_garbage_message_is_refused(http: aiohttp.ClientSession, base_url: str) -> None:
    wallet = Wallet()
    for garbage in ("hello", "", "\x00" * 10, wallet.message("abcdefgh12").to_text() + "\nX: 1"):
        assert await _refused(http, base_url, garbage, wallet.sign(garbage)) == "invalid_message"


async def test_malformed_bodies_are_400_or_415(http: aiohttp.ClientSession, base_url: str) -> None:
    cases: list[tuple[dict[str, object], int]] = [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ({"json": ["message", "signature"]}, 400),
        ({"json": {"message": 1, "signature": "0x"}}, 400),
        ({"json": {"message": "x"}}, 400),
        ({"data": b"", "headers": {"Content-Type": "application/json"}}, 400),
        ({"data": b"message=x", "headers": {"Content-Type": "text/plain"}}, 415),
    ]
    for kwargs, status in cases:
        async with http.post(f"{base_url}/auth/login", **kwargs) as resp:  # type: ignore[arg-type]
            assert resp.status == status
            body = await resp.json()
            expected = "invalid_request" if status == 400 else "unsupported_media_type"
            assert body["error"] == expected, body


async def test_chain_not_accepted(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start("all", settings.replace(siwe_chain_ids=frozenset({10})))
    base = f"http://127.0.0.1:{rt.port}"
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base), chain_id=1).to_text()
    assert await _refused(http, base, text, wallet.sign(text)) == "invalid_chain"
    text = wallet.message(await get_nonce(http, base), chain_id=10).to_text()
    assert (await login(http, base, text, wallet.sign(text)))[0] == 200


async def test_concurrent_logins_with_one_message_succeed_once(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base_url)).to_text()
    sig = wallet.sign(text)
    results = await asyncio.gather(*(login(http, base_url, text, sig) for _ in range(20)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [401] * 19
    assert {b["error"] for s, b in results if s == 401} == {"invalid_nonce"}


async def test_logout_revokes_the_token(http: aiohttp.ClientSession, base_url: str) -> None:
    token = await sign_in(http, base_url, Wallet())
    assert await _me(http, base_url, token) == 200
    async with http.post(f"{base_url}/auth/logout", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
    assert await _me(http, base_url, token) == 401


async def test_logout_is_seen_by_another_instance_within_a_second(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession, service: Runtime
) -> None:
    other = await cluster.start("api")
    a = f"http://127.0.0.1:{service.port}"
    b = f"http://127.0.0.1:{other.port}"
    token = await sign_in(http, a, Wallet())
    assert await _me(http, b, token) == 200  # now cached on B
    async with http.post(f"{a}/auth/logout", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
    revoked_at = time.monotonic()
    while await _me(http, b, token) == 200:
        assert time.monotonic() - revoked_at < 1.0, "B still accepts a revoked token"
        await asyncio.sleep(0.01)


async def test_logout_evicts_the_token_elsewhere_through_its_notify(
    cluster: Cluster,
    dsn: str,
    settings: Settings,
    http: aiohttp.ClientSession,
    service: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With cache entries that would stay valid for a minute, another instance still refuses
    a revoked token: the logout's NOTIFY evicted it there."""
    import api.sessions

    monkeypatch.setattr(api.sessions, "CACHE_TTL_S", 60.0)
    monkeypatch.setattr(api.sessions, "REFRESH_AFTER_S", 60.0)
    other = await cluster.start("api")
    a = f"http://127.0.0.1:{service.port}"
    b = f"http://127.0.0.1:{other.port}"
    token = await sign_in(http, a, Wallet())
    assert await _me(http, b, token) == 200  # now cached on B, for a minute
    heard = asyncio.Event()
    assert other.listener is not None
    other.listener.subscribe(AUTH, lambda _payload: heard.set())  # after B's own handler
    async with http.post(f"{a}/auth/logout", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
    async with asyncio.timeout(10):
        await heard.wait()
    assert await _me(http, b, token) == 401


async def test_a_token_in_use_is_re_read_in_the_background_never_trusted_longer(
    http: aiohttp.ClientSession,
    base_url: str,
    service: Runtime,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import api.sessions
    from api.sessions import CACHE_TTL_S, REFRESH_AFTER_S, Sessions

    clock = [1000.0]
    monkeypatch.setattr(api.sessions.time, "monotonic", lambda: clock[0])
    token = await sign_in(http, base_url, Wallet())
    sessions = Sessions(service.pool, service.settings)
    try:
        assert await sessions.authenticate(token) is not None  # looked up, cached
        clock[0] += REFRESH_AFTER_S / 2
        assert await sessions.authenticate(token) is not None and not sessions._refreshing
        # Revoked behind the cache's back (no NOTIFY). Past half its life the entry still
        # answers at once, and a re-read starts beside the request.
        await db.execute("UPDATE sessions SET revoked_at = now()")
        clock[0] += REFRESH_AFTER_S / 2
        assert await sessions.authenticate(token) is not None
        refresh = list(sessions._refreshing.values())
        assert len(refresh) == 1
        await refresh[0]
        assert await sessions.authenticate(token) is None  # the re-read saw the revocation
    finally:
        await sessions.close()

    # Without any request in between, an entry dies CACHE_TTL_S after its look-up began.
    token = await sign_in(http, base_url, Wallet())
    sessions = Sessions(service.pool, service.settings)
    try:
        assert await sessions.authenticate(token) is not None
        await db.execute("UPDATE sessions SET revoked_at = now() WHERE revoked_at IS NULL")
        clock[0] += CACHE_TTL_S
        assert await sessions.authenticate(token) is None
    finally:
        await sessions.close()


async def test_expired_session_is_refused(
    http: aiohttp.ClientSession, base_url: str, db: asyncpg.Connection
) -> None:
    token = await sign_in(http, base_url, Wallet())
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    assert await _me(http, base_url, token) == 401


async def test_session_ttl_follows_the_setting(
    dsn: str, settings: Settings, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    async with running_service(settings.replace(session_ttl_s=120.5), dsn=dsn) as rt:
        await sign_in(http, f"http://127.0.0.1:{rt.port}", Wallet())
    ttl = await db.fetchval("SELECT extract(epoch FROM expires_at - created_at) FROM sessions")
    assert float(ttl) == pytest.approx(120.5, abs=1)


async def test_bearer_is_required_and_checked(http: aiohttp.ClientSession, base_url: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
    ):
        async with http.get(f"{base_url}/jobs", headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthenticated"


async def test_ticket_works_once_on_the_events_route_only(
    http: aiohttp.ClientSession, base_url: str, service: Runtime
) -> None:
    token = await sign_in(http, base_url, Wallet())
    async with http.post(f"{base_url}/auth/ticket", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        ticket = (await resp.json())["ticket"]
    http.cookie_jar.clear()
    job = uuid.uuid4()
    # Not accepted anywhere but the events route, and not consumed there.
    async with http.get(f"{base_url}/jobs/{job}?ticket={ticket}") as resp:
        assert resp.status == 401
    async with http.get(f"{base_url}/jobs/{job}/events?ticket={ticket}") as resp:
        assert resp.status != 401  # authenticated: the job does not exist
    async with http.get(f"{base_url}/jobs/{job}/events?ticket={ticket}") as resp:
        assert resp.status == 401
        assert "ticket" in (await resp.json())["message"]


async def test_admin_wallets_are_recognised(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession
) -> None:
    admin = Wallet()
    rt = await cluster.start(admin_wallets=frozenset({admin.address}))
    base = f"http://127.0.0.1:{rt.port}"
    token = await sign_in(http, base, admin)
    async with http.get(f"{base}/auth/me", headers={"Authorization": f"Bearer {token}"}) as r:
        assert (await r.json())["admin"] is True


async def test_nonce_requests_are_rate_limited(http: aiohttp.ClientSession, base_url: str) -> None:
    statuses = []
    for _ in range(30):
        async with http.get(f"{base_url}/auth/nonce") as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert (await resp.json())["error"] == "rate_limited"
    assert statuses[:20] == [200] * 20
    assert 429 in statuses[20:]


async def test_no_table_holds_a_token_or_ticket_in_clear(
    http: aiohttp.ClientSession, base_url: str, db: asyncpg.Connection
) -> None:
    token = await sign_in(http, base_url, Wallet())
    async with http.post(f"{base_url}/auth/ticket", headers={"Authorization": f"Bearer {token}"}) as resp:
        ticket = (await resp.json())["ticket"]
    tables = [
        r["tablename"] for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    assert "sessions" in tables
    for table in tables:
        dump = await db.fetchval(f"SELECT coalesce(string_agg(t::text, '\n'), '') FROM \"{table}\" t")
        assert token not in dump and ticket not in dump, table
        assert token.encode().hex() not in dump


@pytest.fixture
async def cors_base(cluster: Cluster) -> str:
    rt = await cluster.start(cors_origins=("https://portal.example",))
    return f"http://127.0.0.1:{rt.port}"


async def test_cors_preflight_from_allowed_and_foreign_origins(
    http: aiohttp.ClientSession, cors_base: str
) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with http.options(f"{cors_base}/jobs", headers={"Origin": "https://portal.example", **ask}) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "https://portal.example"
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
        assert allowed == {"authorization", "content-type", "idempotency-key"}
    async with http.options(f"{cors_base}/jobs", headers={"Origin": "https://evil.example", **ask}) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.get(f"{cors_base}/auth/nonce", headers={"Origin": "https://portal.example"}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "https://portal.example"
    async with http.get(f"{cors_base}/auth/nonce", headers={"Origin": "https://evil.example"}) as r:
        assert r.status == 200
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_cross_site_cookie_attributes(http: aiohttp.ClientSession, cors_base: str) -> None:
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, cors_base)).to_text()
    async with http.post(
        f"{cors_base}/auth/login", json={"message": text, "signature": wallet.sign(text)}
    ) as resp:
        cookie = resp.cookies["runner_session"]
    assert cookie["samesite"] == "None"
    assert cookie["secure"] is True


async def _login_cookie(http: aiohttp.ClientSession, base: str, headers: dict[str, str] | None = None) -> Any:
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base)).to_text()
    async with http.post(
        f"{base}/auth/login", json={"message": text, "signature": wallet.sign(text)}, headers=headers
    ) as resp:
        assert resp.status == 200, await resp.text()
        return resp.cookies["runner_session"]


async def test_an_https_deployment_without_cors_sets_secure_cookies(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Behind a TLS-terminating proxy the service itself is reached over http: without
    Secure, the browser would also send the session cookie to http:// on that host."""
    rt = await cluster.start(public_url="https://runner.example")
    cookie = await _login_cookie(http, f"http://127.0.0.1:{rt.port}")
    assert cookie["secure"] is True and cookie["samesite"] == "Lax"


async def test_a_request_forwarded_as_https_gets_a_secure_cookie(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    """No public URL set: the proxy's X-Forwarded-Proto says the browser used https."""
    cookie = await _login_cookie(http, base_url, {"X-Forwarded-Proto": "https"})
    assert cookie["secure"] is True and cookie["samesite"] == "Lax"
    cookie = await _login_cookie(http, base_url, {"X-Forwarded-Proto": "http"})
    assert not cookie["secure"]


async def test_a_wrong_domain_names_the_accepted_ones(http: aiohttp.ClientSession, base_url: str) -> None:
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base_url), "portal.example").to_text()
    status, body = await login(http, base_url, text, wallet.sign(text))
    assert status == 401 and body["error"] == "invalid_domain"
    assert "runner.test" in body["message"] and "portal.example" in body["message"]


@pytest.mark.parametrize("case", ["lower", "upper"])
async def test_an_address_in_one_case_signs_in_as_its_checksummed_form(
    http: aiohttp.ClientSession, base_url: str, case: str
) -> None:
    """Wallets' one-click flows send the address lowercase; the signature is over that text."""
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base_url)).to_text()
    text = text.replace(wallet.address, "0x" + getattr(wallet.address[2:], case)())
    status, body = await login(http, base_url, text, wallet.sign(text))
    assert status == 200, body
    assert body["address"] == wallet.address
    async with http.get(f"{base_url}/auth/me", headers={"Authorization": f"Bearer {body['token']}"}) as r:
        assert (await r.json())["address"] == wallet.address


async def test_a_mixed_case_address_with_a_wrong_checksum_is_invalid_message(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    while True:  # one letter's case flipped; a flip that leaves one case alone is no checksum
        wallet = Wallet()
        digits = wallet.address[2:]
        at = next(i for i, c in enumerate(digits) if c.isalpha())
        flipped = digits[:at] + digits[at].swapcase() + digits[at + 1 :]
        if flipped not in (flipped.lower(), flipped.upper()):
            break
    text = wallet.message(await get_nonce(http, base_url)).to_text().replace(wallet.address, "0x" + flipped)
    assert await _refused(http, base_url, text, wallet.sign(text)) == "invalid_message"


async def test_a_message_is_verified_as_sent_not_as_reprinted(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    """`Chain ID: 01` is EIP-4361 (1*DIGIT); the wallet signed those very bytes."""
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base_url)).to_text().replace("Chain ID: 1", "Chain ID: 01")
    status, body = await login(http, base_url, text, wallet.sign(text))
    assert status == 200, body


async def test_a_signature_without_0x_signs_in(http: aiohttp.ClientSession, base_url: str) -> None:
    """eth-account's `signature.hex()` has no 0x."""
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base_url)).to_text()
    status, body = await login(http, base_url, text, wallet.sign(text).removeprefix("0x"))
    assert status == 200, body


async def test_a_malformed_signature_is_called_malformed(http: aiohttp.ClientSession, base_url: str) -> None:
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base_url)).to_text()
    for malformed in ("not hex", "0x123", ""):
        status, body = await login(http, base_url, text, malformed)
        assert status == 401 and body["error"] == "invalid_signature", body
        assert "malformed" in body["message"]


async def test_messages_written_by_viem_and_siwe_sign_in(
    cluster: Cluster, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    """tests/data/siwe-clients/: as the libraries wrote and signed them, byte for byte. Their
    nonces were made there, so they are put where /auth/nonce would have put them."""
    rt = await cluster.start(siwe_domains=tuple({case["domain"] for case in CLIENT_MESSAGES.values()}))
    base = f"http://127.0.0.1:{rt.port}"
    for name, case in CLIENT_MESSAGES.items():
        nonce = siwe.parse(case["message"]).nonce
        await db.execute(
            "INSERT INTO auth_nonces (nonce, expires_at) VALUES ($1, now() + interval '1 minute')", nonce
        )
        status, body = await login(http, base, case["message"], case["signature"])
        assert status == 200, (name, body)
        assert body["address"] == case["address"], name


async def test_a_domain_with_userinfo_is_refused(http: aiohttp.ClientSession, base_url: str) -> None:
    """'phish.example@runner.test' is host runner.test to a URL parser, but a person reading the
    wallet's prompt sees phish.example: a domain naming anything before the host is refused."""
    wallet = Wallet()
    for domain in ("phish.example@runner.test", "runner.test:x@runner.test", "@runner.test"):
        text = wallet.message(await get_nonce(http, base_url), domain).to_text()
        assert text.startswith(domain + " wants you to sign in")  # the message really names it
        assert await _refused(http, base_url, text, wallet.sign(text)) in (
            "invalid_message",
            "invalid_domain",
        )
    # The same wallet, the same host without userinfo, signs in.
    text = wallet.message(await get_nonce(http, base_url), "runner.test").to_text()
    assert (await login(http, base_url, text, wallet.sign(text)))[0] == 200


async def test_a_revocation_heard_or_possibly_missed_forgets_the_token_for_the_outage_path(
    http: aiohttp.ClientSession, base_url: str, service: Runtime
) -> None:
    """The tokens kept for a cancel while Postgres is away (Sessions.remembered) fail closed:
    one revoked on another instance (its NOTIFY heard) is forgotten, whoever else listens
    for revocations; after a listener reconnect, when revocations may have been missed,
    all of them are."""
    from api.sessions import Sessions, token_hash

    sessions = Sessions(service.pool, service.settings)  # no on_revoked listeners
    try:
        token = await sign_in(http, base_url, Wallet())
        assert await sessions.authenticate(token) is not None
        assert sessions.remembered(token) is not None
        sessions.evict(token_hash(token).hex())
        assert sessions.remembered(token) is None

        other = await sign_in(http, base_url, Wallet())
        assert await sessions.authenticate(other) is not None
        sessions.clear()
        assert sessions.remembered(other) is None
    finally:
        await sessions.close()
