"""Real wallets for tests: eth-account keys signing real EIP-4361 messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from runner.siwe import SiweMessage

# Messages as viem and the siwe library write and sign them (how they were made: its README).
CLIENT_MESSAGES: dict[str, dict[str, str]] = json.loads(
    (Path(__file__).resolve().parent / "data" / "siwe-clients" / "messages.json").read_text()
)


def _ts(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Wallet:
    account: LocalAccount = field(default_factory=Account.create)

    @property
    def address(self) -> str:
        return str(self.account.address)

    def message(self, nonce: str, domain: str = "runner.test", **overrides: Any) -> SiweMessage:
        now = datetime.now(UTC)
        fields: dict[str, Any] = {
            "domain": domain,
            "address": self.address,
            "uri": f"http://{domain}/",
            "version": "1",
            "chain_id": 1,
            "nonce": nonce,
            "issued_at": _ts(now),
            "statement": "Sign in to the runner.",
            "expiration_time": _ts(now + timedelta(minutes=5)),
        }
        fields.update(overrides)
        return SiweMessage(**fields)

    def sign(self, text: str) -> str:
        signed = self.account.sign_message(encode_defunct(text=text))
        return "0x" + bytes(signed.signature).hex()


async def get_nonce(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/auth/nonce") as resp:
        assert resp.status == 200, await resp.text()
        nonce: str = (await resp.json())["nonce"]
        return nonce


async def login(
    http: aiohttp.ClientSession, base: str, message: str, signature: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/auth/login", json={"message": message, "signature": signature}) as resp:
        return resp.status, await resp.json()


async def sign_in(http: aiohttp.ClientSession, base: str, wallet: Wallet, domain: str = "runner.test") -> str:
    """A full sign-in; returns the bearer token."""
    text = wallet.message(await get_nonce(http, base), domain).to_text()
    status, body = await login(http, base, text, wallet.sign(text))
    assert status == 200, body
    token: str = body["token"]
    return token
