"""Contract wallets' signatures, checked on chain with one `eth_call`: ERC-1271 wallets that
are deployed, and ERC-6492-wrapped signatures of wallets that are not yet.

The call carries ERC-6492's "deployless" universal validator (runner/data/erc6492/: its
source, licence and how it was compiled) and no `to`: the node runs its constructor, which
answers one byte, 0x01 for a valid signature. Nothing is written on chain. No web3: eth-abi
encodes the arguments, aiohttp sends the call.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

import aiohttp
from eth_abi.abi import encode

MAGIC_SUFFIX = bytes.fromhex("64926492" * 8)  # ends an ERC-6492-wrapped signature
MAX_REPLY_BYTES = 64 * 1024  # the answer is one byte; an error message is short
CONCURRENT_CALLS = 16  # per instance: logins beyond it queue, within the timeout


class ChainUnavailable(Exception):
    """The chain's RPC could not give an answer: unreachable, slow, or it failed the call.
    Its text names the chain and what went wrong, never the URL (it carries the key)."""


@functools.cache
def validator_code() -> bytes:
    text = (resources.files("runner") / "data" / "erc6492" / "ValidateSigOffchain.hex").read_text()
    return bytes.fromhex(text.strip().removeprefix("0x"))


def call_data(signer: str, hash_: bytes, signature: bytes) -> bytes:
    """The validator's creation code and its constructor's arguments."""
    return validator_code() + encode(["address", "bytes32", "bytes"], [signer, hash_, signature])


def _is_revert(error: Mapping[str, Any]) -> bool:
    """A revert of the validator is its "no": it reverts where a 6492 wrapper's factory call
    fails, a wallet's isValidSignature reverts (Safe's does for a wrong owner), or an address
    without code gets a signature that is not 65 bytes. Geth-style nodes say code 3; older
    ones only "execution reverted"."""
    message = error.get("message")
    return error.get("code") == 3 or (isinstance(message, str) and "revert" in message.lower())


class Validator:
    """One instance's contract-wallet checks: the chains it has RPC URLs for, its HTTP client
    (opened at the first check), and a bound on calls in flight."""

    def __init__(self, urls: Mapping[int, str], timeout_s: float) -> None:
        self.urls = dict(urls)
        self.timeout_s = timeout_s
        self._http: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(CONCURRENT_CALLS)

    def covers(self, chain_id: int) -> bool:
        return chain_id in self.urls

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def is_valid(self, chain_id: int, signer: str, hash_: bytes, signature: bytes) -> bool:
        """Whether `signature` is `signer`'s over `hash_` on that chain (ERC-1271, ERC-6492,
        or a key's). Raises ChainUnavailable unless the chain answered yes or no."""
        if int(signer, 16) == 0:
            # The validator's key fallback compares ecrecover's answer with the signer, and
            # ecrecover answers address(0) for any signature it cannot recover: no yes for it.
            return False
        url = self.urls[chain_id]
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_call",
            "params": [{"data": "0x" + call_data(signer, hash_, signature).hex()}, "latest"],
        }
        try:
            async with asyncio.timeout(self.timeout_s), self._slots:
                reply = await self._post(chain_id, url, body)
        except TimeoutError:
            raise ChainUnavailable(f"{_rpc(chain_id)} did not answer within {self.timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ChainUnavailable(f"{_rpc(chain_id)} could not be reached ({type(exc).__name__})") from None
        return _verdict(chain_id, reply)

    async def _post(self, chain_id: int, url: str, body: dict[str, Any]) -> Any:
        if self._http is None:
            # No redirects: a JSON-RPC endpoint has no reason to send the signature elsewhere.
            self._http = aiohttp.ClientSession(headers={"Accept": "application/json"})
        async with self._http.post(url, json=body, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ChainUnavailable(f"{_rpc(chain_id)} answered HTTP {resp.status}")
            raw = bytearray()
            async for chunk in resp.content.iter_chunked(16384):
                raw += chunk
                if len(raw) > MAX_REPLY_BYTES:
                    raise ChainUnavailable(f"{_rpc(chain_id)} answered more than {MAX_REPLY_BYTES} bytes")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            raise ChainUnavailable(f"{_rpc(chain_id)} answered something that is not JSON") from None


def _verdict(chain_id: int, reply: Any) -> bool:
    """0x01 is the one yes; a revert is a no; anything else is no answer at all."""
    if not isinstance(reply, dict):
        raise ChainUnavailable(f"{_rpc(chain_id)} answered something that is not JSON-RPC")
    error = reply.get("error")
    if isinstance(error, dict):
        if _is_revert(error):
            return False
        code, message = error.get("code"), str(error.get("message"))[:200]
        raise ChainUnavailable(f"{_rpc(chain_id)} failed the call (JSON-RPC error {code}: {message})")
    result = reply.get("result")
    if result == "0x01":
        return True
    if result == "0x00":
        return False
    shown = str(result)[:80]
    raise ChainUnavailable(f"{_rpc(chain_id)} answered {shown!r}, not the validator's 0x00 or 0x01")


def _rpc(chain_id: int) -> str:
    return f"chain {chain_id}'s RPC"  # never its URL: that often carries the provider's key
