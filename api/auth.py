"""Wallet sign-in routes and the middleware that puts a session on every /jobs call."""

from __future__ import annotations

import re

import structlog
from aiohttp import web

from api.bodies import iso, json_reply, read_json_object
from api.errors import BadRequest, Handler, TooManyRequests, Unauthenticated, Unavailable
from api.ratelimit import RateLimiter, client_key
from api.sessions import Identity, Sessions
from runner import erc6492, siwe
from runner.db import is_transient

log = structlog.get_logger("api.auth")

SESSIONS = web.AppKey("sessions", Sessions)
NONCE_LIMITER = web.AppKey("nonce_limiter", RateLimiter)
CONTRACT_WALLETS = web.AppKey("contract_wallets", erc6492.Validator)
IDENTITY = web.RequestKey("identity", Identity)
COOKIE = "runner_session"
_EVENTS_PATH = re.compile(r"/jobs/[^/]+/events|/events")
_CANCEL_PATH = re.compile(r"/jobs/[^/]+/cancel")
_SESSION_PATHS = frozenset(
    {
        "/auth/me",
        "/auth/logout",
        "/auth/ticket",
        "/backends",
        "/usage",
        "/events",
        "/webhooks/secret",
        "/webhooks/secret/rotate",
    }
)


def identity_of(request: web.Request) -> Identity:
    identity: Identity = request[IDENTITY]
    return identity


def _is_job_cancel(request: web.Request) -> bool:
    return request.method == "POST" and _CANCEL_PATH.fullmatch(request.path) is not None


def _needs_session(path: str) -> bool:
    return path == "/jobs" or path.startswith("/jobs/") or path in _SESSION_PATHS


async def _identify(request: web.Request) -> Identity:
    sessions = request.app[SESSIONS]
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        try:
            identity = await sessions.authenticate(token.strip())
        except Exception as exc:
            # Postgres is away. A job's cancel must still stop the work this instance holds:
            # a token verified here before, and not seen revoked, is enough for that alone.
            remembered = (
                sessions.remembered(token.strip()) if is_transient(exc) and _is_job_cancel(request) else None
            )
            if remembered is None:
                raise
            log.warning("session_remembered_in_outage", wallet=remembered.address, error=repr(exc))
            return remembered
        if identity is None:
            raise Unauthenticated("the session is unknown, expired or signed out; sign in again")
        return identity
    if request.method not in ("GET", "HEAD") and request.path != "/auth/logout":
        # Cookies ride along on cross-site requests; requiring the header keeps CSRF out.
        # Signing out is the exception: a page reloaded has its cookie but no token, and a
        # forged sign-out costs its victim a signature, nothing more.
        raise Unauthenticated("send Authorization: Bearer <token> (cookies only work on GET)")
    ticket = request.query.get("ticket")
    if ticket is not None and _EVENTS_PATH.fullmatch(request.path):
        identity = await sessions.redeem_ticket(ticket)
        if identity is None:
            raise Unauthenticated("the ticket is unknown, used or expired")
        return identity
    cookie = request.cookies.get(COOKIE)
    if cookie:
        identity = await sessions.authenticate(cookie)
        if identity is None:
            raise Unauthenticated("the session cookie is expired or signed out; sign in again")
        return identity
    raise Unauthenticated("sign in first: GET /auth/nonce, then POST /auth/login")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _needs_session(request.path) and request.method != "OPTIONS":
        identity = await _identify(request)
        request[IDENTITY] = identity
        structlog.contextvars.bind_contextvars(wallet=identity.address)
    return await handler(request)


async def nonce(request: web.Request) -> web.Response:
    client = client_key(request, request.app[SESSIONS].settings.trusted_proxies)
    if not request.app[NONCE_LIMITER].allow(client):
        raise TooManyRequests("too many nonce requests from this address; wait a little")
    value, expires_at = await request.app[SESSIONS].issue_nonce()
    return json_reply({"nonce": value, "expires_at": iso(expires_at)})


async def login(request: web.Request) -> web.Response:
    # Nothing of the message is stored but what parsing it checks (nonce, address): a message
    # with a NUL in it is malformed, the login's own 401 invalid_message.
    body = await read_json_object(request, stored=False)
    message, signature = body.get("message"), body.get("signature")
    if not isinstance(message, str) or not isinstance(signature, str):
        raise BadRequest("the body must have string fields 'message' and 'signature'")
    runtime_settings = request.app[SESSIONS].settings
    try:
        parsed = siwe.parse(message)
        siwe.check_claims(
            parsed, domains=runtime_settings.allowed_siwe_domains, chain_ids=runtime_settings.siwe_chain_ids
        )
        raw_signature = siwe.signature_bytes(signature)
        if not siwe.signed_by_key(parsed, raw_signature):
            await _check_contract_signature(request.app[CONTRACT_WALLETS], parsed, raw_signature)
    except siwe.SiweError as exc:
        log.info("login_refused", reason=exc.reason.value, detail=exc.message)
        raise Unauthenticated(exc.message, code=exc.reason.value) from None
    opened = await request.app[SESSIONS].login(parsed.nonce, parsed.address)
    if opened is None:
        log.info("login_refused", reason="invalid_nonce", address=parsed.address)
        raise Unauthenticated(
            "the nonce was not issued here, is used, or has expired", code=siwe.Reason.INVALID_NONCE.value
        )
    token, expires_at = opened
    log.info("login", wallet=parsed.address)
    response = json_reply({"token": token, "address": parsed.address, "expires_at": iso(expires_at)})
    cross_site = bool(runtime_settings.cors_origins)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(runtime_settings.session_ttl_s),
        path="/",
        httponly=True,
        samesite="None" if cross_site else "Lax",
        secure=cross_site or _over_https(request, runtime_settings.public_https) or None,
    )
    return response


def _over_https(request: web.Request, public_https: bool) -> bool:
    """Whether the browser reached us over https: the public URL says so, TLS ended here, or
    the proxy that ended it says so. The header is taken on trust because it can only add
    Secure: a client that lies gets a cookie its own browser will not keep."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return public_https or request.secure or forwarded == "https"


async def _check_contract_signature(
    wallets: erc6492.Validator, message: siwe.SiweMessage, signature: bytes
) -> None:
    """Not a key's signature of the address: a contract wallet's (ERC-1271, or ERC-6492 before
    its deployment), if the message's chain says so in one eth_call. Fails closed: only the
    chain's yes signs in; no answer is a 503, never a sign-in."""
    address, chain_id = message.address, message.chain_id
    if not wallets.covers(chain_id):
        raise siwe.SiweError(
            siwe.Reason.INVALID_SIGNATURE,
            f"the signature is not {address}'s key's; a contract wallet's signature (ERC-1271, "
            f"ERC-6492) is checked on its chain, and this service has no RPC for chain id {chain_id}: "
            f"contract wallets need RUNNER_CHAIN_RPC_URLS to name chain id {chain_id}",
        )
    try:
        valid = await wallets.is_valid(chain_id, address, siwe.signed_hash(message), signature)
    except erc6492.ChainUnavailable as exc:
        log.warning("contract_wallet_check_unavailable", chain_id=chain_id, address=address, error=str(exc))
        raise Unavailable(f"the contract wallet's signature could not be checked: {exc}; try again") from None
    if not valid:
        raise siwe.SiweError(
            siwe.Reason.INVALID_SIGNATURE,
            f"the signature is not {address}'s: not its key's, and on chain id {chain_id} its "
            "contract (ERC-1271, ERC-6492) does not accept it",
        )


async def logout(request: web.Request) -> web.Response:
    identity = identity_of(request)
    await request.app[SESSIONS].revoke(identity)
    log.info("logout")
    response = json_reply({"ok": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    identity = identity_of(request)
    return json_reply(
        {
            "address": identity.address,
            "admin": identity.admin,
            "expires_at": iso(identity.expires_at),
        }
    )


async def ticket(request: web.Request) -> web.Response:
    value, expires_at = await request.app[SESSIONS].issue_ticket(identity_of(request))
    return json_reply({"ticket": value, "expires_at": iso(expires_at)})


def setup_auth(app: web.Application, sessions: Sessions) -> None:
    app[SESSIONS] = sessions
    app[NONCE_LIMITER] = RateLimiter(capacity=20, refill_per_s=0.5)
    wallets = app[CONTRACT_WALLETS] = erc6492.Validator(
        sessions.settings.chain_rpc_urls, sessions.settings.chain_rpc_timeout_s
    )
    app.on_cleanup.append(lambda _app: wallets.close())
    app.router.add_get("/auth/nonce", nonce)
    app.router.add_post("/auth/login", login)
    app.router.add_post("/auth/logout", logout)
    app.router.add_get("/auth/me", me)
    app.router.add_post("/auth/ticket", ticket)
