"""The contract-wallet check's one eth_call against a fake JSON-RPC endpoint: what it sends, and
every answer that is not a plain yes or no (the real node: tests/integration/test_contract_wallets.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from eth_abi import decode

from runner import erc6492
from tests.client import free_port

SIGNER = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
HASH = bytes(range(32))
SIGNATURE = b"\x11" * 300 + erc6492.MAGIC_SUFFIX

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeRpc:
    def __init__(self) -> None:
        self.answer: Answer = self.reply({"jsonrpc": "2.0", "id": 1, "result": "0x01"})
        self.bodies: list[dict[str, Any]] = []
        self.release = asyncio.Event()  # a hanging answer waits on it
        self.url = ""

    @staticmethod
    def reply(body: Any, status: int = 200) -> Answer:
        async def answer(_request: web.Request) -> web.StreamResponse:
            return web.Response(text=json.dumps(body), status=status, content_type="application/json")

        return answer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        return await self.answer(request)


@pytest.fixture
async def rpc() -> AsyncIterator[FakeRpc]:
    fake = FakeRpc()
    app = web.Application()
    app.router.add_post("/v2/{key}", fake.handle)
    app.router.add_get("/elsewhere", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}/v2/SECRETKEY"
    yield fake
    fake.release.set()
    await runner.cleanup()


async def _check(url: str, timeout_s: float = 5.0) -> bool:
    validator = erc6492.Validator({8453: url}, timeout_s)
    try:
        return await validator.is_valid(8453, SIGNER, HASH, SIGNATURE)
    finally:
        await validator.close()


def test_the_validator_code_is_the_vendored_build() -> None:
    code = erc6492.validator_code()
    shipped = Path(erc6492.__file__).parent / "data" / "erc6492" / "ValidateSigOffchain.hex"
    assert shipped.read_text().strip() == "0x" + code.hex()
    assert code.startswith(bytes.fromhex("6080604052"))  # solc's creation-code preamble


async def test_one_eth_call_without_to_carries_the_validator_and_its_arguments(rpc: FakeRpc) -> None:
    assert await _check(rpc.url) is True
    [body] = rpc.bodies
    assert body["method"] == "eth_call" and body["params"][1] == "latest"
    [call] = body["params"][:1]
    assert set(call) == {"data"}  # no `to`: the node runs the constructor
    data = bytes.fromhex(call["data"].removeprefix("0x"))
    code = erc6492.validator_code()
    assert data.startswith(code)
    signer, hash_, signature = decode(["address", "bytes32", "bytes"], data[len(code) :])
    assert (signer.lower(), hash_, signature) == (SIGNER.lower(), HASH, SIGNATURE)


@pytest.mark.parametrize(
    ("error", "why"),
    [
        ({"code": 3, "message": "execution reverted: custom error 0x1234", "data": "0x1234"}, "geth, anvil"),
        ({"code": -32000, "message": "execution reverted"}, "a revert without data"),
        ({"code": -32015, "message": "VM execution error: Reverted 0x08c379a0"}, "a revert, other words"),
    ],
)
async def test_a_revert_is_a_no(rpc: FakeRpc, error: dict[str, Any], why: str) -> None:
    rpc.answer = rpc.reply({"jsonrpc": "2.0", "id": 1, "error": error})
    assert await _check(rpc.url) is False, why


async def test_0x00_is_a_no(rpc: FakeRpc) -> None:
    rpc.answer = rpc.reply({"jsonrpc": "2.0", "id": 1, "result": "0x00"})
    assert await _check(rpc.url) is False


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (FakeRpc.reply({"error": "rate limited"}, status=429), "HTTP 429"),
        (FakeRpc.reply({"error": "down"}, status=502), "HTTP 502"),
        (
            FakeRpc.reply(
                {"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "limit exceeded"}}
            ),
            "JSON-RPC error -32005: limit exceeded",
        ),
        (FakeRpc.reply({"jsonrpc": "2.0", "id": 1, "result": "0x"}), "not the validator's"),
        (
            FakeRpc.reply({"jsonrpc": "2.0", "id": 1, "result": "0x" + "00" * 31 + "01"}),
            "not the validator's",
        ),
        (FakeRpc.reply({"jsonrpc": "2.0", "id": 1}), "not the validator's"),
        (FakeRpc.reply([1, 2]), "not JSON-RPC"),
        (FakeRpc.reply({"result": "0x01", "padding": "x" * 70_000}), "more than"),
    ],
)
async def test_anything_but_a_yes_or_no_is_unavailable_naming_the_chain_not_the_url(
    rpc: FakeRpc, answer: Answer, said: str
) -> None:
    rpc.answer = answer
    with pytest.raises(erc6492.ChainUnavailable) as info:
        await _check(rpc.url)
    assert said in str(info.value) and "chain 8453" in str(info.value)
    assert "SECRETKEY" not in str(info.value)


async def test_a_json_text_answer_nested_too_deep_is_unavailable(rpc: FakeRpc) -> None:
    async def deep(_request: web.Request) -> web.StreamResponse:
        return web.Response(text="[" * 20_000 + "]" * 20_000, content_type="application/json")

    rpc.answer = deep
    with pytest.raises(erc6492.ChainUnavailable, match="not JSON"):
        await _check(rpc.url)


async def test_a_redirect_is_not_followed(rpc: FakeRpc) -> None:
    async def redirect(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/elsewhere")

    rpc.answer = redirect
    with pytest.raises(erc6492.ChainUnavailable, match="HTTP 302"):
        await _check(rpc.url)
    assert len(rpc.bodies) == 1


async def test_an_rpc_that_does_not_answer_is_unavailable_after_the_timeout(rpc: FakeRpc) -> None:
    async def hang(_request: web.Request) -> web.StreamResponse:
        await rpc.release.wait()
        return web.Response(text="{}")

    rpc.answer = hang
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(erc6492.ChainUnavailable, match=r"did not answer within 0\.3 s"):
        await _check(rpc.url, timeout_s=0.3)
    assert loop.time() - started < 3


async def test_an_rpc_that_is_down_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/v2/SECRETKEY"  # nothing listens there
    with pytest.raises(erc6492.ChainUnavailable, match="could not be reached") as info:
        await _check(url)
    assert "SECRETKEY" not in str(info.value)


async def test_the_zero_address_is_a_no_without_a_call(rpc: FakeRpc) -> None:
    validator = erc6492.Validator({8453: rpc.url}, 5.0)
    try:
        assert await validator.is_valid(8453, "0x" + "00" * 20, HASH, b"\x00" * 64 + b"\x1b") is False
    finally:
        await validator.close()
    assert rpc.bodies == []  # the fake would have said yes
