"""The API client behind the CLI: HTTP calls, sign-in, and the credentials kept on disk."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from runner.timeutil import iso

# eth-account (and runner.siwe, which uses it) are imported only where a key is used: they take
# half a second to import, which every other verb would otherwise pay.


# What -v never prints: the session token (login) and tickets, wherever they appear in a reply.
_SECRETS = re.compile(r'"(token|ticket)"\s*:\s*"[^"]*"')


def _why(exc: BaseException) -> str:
    """A connection failure in a person's words (aiohttp's own text names its SSL context)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error) or "connection failed"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


class ClientError(Exception):
    """A call that did not succeed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.body = body or {"ok": False, "error": code, "message": message}


class NotSignedIn(ClientError):
    def __init__(self, message: str = "not signed in: run `runner login`") -> None:
        super().__init__(401, "unauthenticated", message)


def config_dir() -> Path:
    return Path(os.environ.get("RUNNER_CONFIG_DIR") or Path.home() / ".config" / "runner")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


@dataclass(frozen=True, slots=True)
class WalletKey:
    key: str
    development: bool  # generated here, not the user's own wallet

    @property
    def address(self) -> str:
        from eth_account import Account

        return str(Account.from_key(self.key).address)


def wallet_key() -> WalletKey:
    """RUNNER_WALLET_KEY, or a development key generated once in the config dir."""
    from eth_account import Account

    env_key = os.environ.get("RUNNER_WALLET_KEY")
    if env_key:
        try:
            Account.from_key(env_key)
        except Exception:  # eth-account raises several types for a malformed key
            raise ClientError(0, "invalid_request", "RUNNER_WALLET_KEY is not a hex private key") from None
        return WalletKey(env_key, development=False)
    path = config_dir() / "dev-wallet.key"
    if not path.exists():
        _write_private(path, "0x" + bytes(Account.create().key).hex())
    return WalletKey(path.read_text().strip(), development=True)


class TokenStore:
    """Session tokens per API URL, in a 0600 file of the config dir."""

    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or config_dir()) / "sessions.json"

    def _all(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def get(self, api_url: str) -> dict[str, Any] | None:
        entry: dict[str, Any] | None = self._all().get(api_url)
        return entry

    def put(self, api_url: str, session: dict[str, Any]) -> None:
        data = self._all()
        data[api_url] = session
        _write_private(self.path, json.dumps(data, indent=2))

    def forget(self, api_url: str) -> None:
        data = self._all()
        if data.pop(api_url, None) is not None:
            _write_private(self.path, json.dumps(data, indent=2))

    def token(self, api_url: str) -> str:
        entry = self.get(api_url)
        if entry is None:
            raise NotSignedIn(f"not signed in to {api_url}: run `runner login`")
        expires = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
        if expires <= datetime.now(UTC):
            raise NotSignedIn("the session has expired: run `runner login`")
        token: str = entry["token"]
        return token


class Client:
    def __init__(self, api_url: str, *, token: str | None = None, verbose: bool = False) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.verbose = verbose
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))

    async def close(self) -> None:
        await self.http.close()

    def _log(self, text: str) -> None:
        if self.verbose:
            print(_SECRETS.sub(r'"\1": "<not shown>"', text), file=sys.stderr)

    def _headers(self, auth: bool) -> dict[str, str]:
        if not auth:
            return {}
        if not self.token:
            raise NotSignedIn()
        return {"Authorization": f"Bearer {self.token}"}

    async def call(self, method: str, path: str, *, json_body: Any = None, auth: bool = True) -> Any:
        url = self.api_url + path
        headers = self._headers(auth)
        self._log(f"> {method} {url}" + (f" {json.dumps(json_body)}" if json_body is not None else ""))
        started = time.perf_counter()
        try:
            async with self.http.request(
                method, url, json=json_body, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
            ) as resp:
                text = await resp.text()
                self._log(f"< {resp.status} ({(time.perf_counter() - started) * 1000:.1f} ms) {text[:2000]}")
                try:
                    body = json.loads(text) if text else {}
                except ValueError:
                    body = {"ok": False, "error": "bad_reply", "message": text[:500]}
                if resp.status >= 400:
                    raise ClientError(
                        resp.status, body.get("error", "error"), body.get("message", text[:500]), body
                    )
                return body
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            reason = f"cannot reach the API at {self.api_url}: {_why(exc)}"
            raise ClientError(0, "unreachable", reason) from None

    async def events(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """The job's server-sent events: the job JSON at each change, until it ends."""
        url = f"{self.api_url}/jobs/{job_id}/events"
        self._log(f"> GET {url} (event stream)")
        try:
            async with self.http.get(url, headers=self._headers(True)) as resp:
                if resp.status >= 400:
                    body = await resp.json(content_type=None)
                    raise ClientError(resp.status, body.get("error", "error"), body.get("message", ""), body)
                async for raw in resp.content:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
        except aiohttp.ClientConnectionError as exc:
            raise ClientError(0, "unreachable", f"lost the event stream: {exc}") from None

    async def login(self, key: WalletKey) -> dict[str, Any]:
        """Sign an EIP-4361 message for this API's host:port and open a session."""
        from eth_account import Account
        from eth_account.messages import encode_defunct

        from runner.siwe import SiweMessage

        parts = urlsplit(self.api_url)
        domain = parts.netloc
        nonce = (await self.call("GET", "/auth/nonce", auth=False))["nonce"]
        now = datetime.now(UTC)
        message = SiweMessage(
            domain=domain,
            address=key.address,
            uri=f"{parts.scheme}://{domain}",
            version="1",
            chain_id=1,
            nonce=nonce,
            issued_at=str(iso(now)),
            statement="Sign in to the runner.",
            expiration_time=iso(now + timedelta(minutes=10)),
        ).to_text()
        signature = Account.sign_message(encode_defunct(text=message), key.key).signature
        session: dict[str, Any] = await self.call(
            "POST",
            "/auth/login",
            auth=False,
            json_body={"message": message, "signature": "0x" + bytes(signature).hex()},
        )
        self.token = session["token"]
        return session
