"""Contract wallets sign in, checked on a real node (anvil): a deployed ERC-1271 wallet, a
counterfactual one with an ERC-6492 signature (and nothing deployed by the check), a wrong
owner refused, an RPC that is down a 503, a key's signature needing no RPC at all."""

from __future__ import annotations

import aiohttp
import pytest

from runner import erc6492
from tests.chain import CHAIN_ID, Anvil, ContractWallet
from tests.client import free_port
from tests.conftest import Cluster
from tests.wallets import Wallet, get_nonce, login


async def _base(cluster: Cluster, urls: dict[int, str]) -> str:
    runtime = await cluster.start(chain_rpc_urls=urls)
    return f"http://127.0.0.1:{runtime.port}"


@pytest.fixture
async def base(cluster: Cluster, anvil: Anvil) -> str:
    """An instance that checks chain 31337's contract wallets on anvil."""
    return await _base(cluster, {CHAIN_ID: anvil.url})


def _text(address: str, nonce: str, chain_id: int = CHAIN_ID) -> str:
    # The contract wallet has no key: Wallet only lays out the message for its address.
    message = Wallet().message(nonce, chain_id=chain_id)
    return message.to_text().replace(message.address, address)


async def test_a_deployed_wallet_signs_in(http: aiohttp.ClientSession, base: str, anvil: Anvil) -> None:
    wallet = await ContractWallet(anvil).setup(deploy=True)
    text = _text(wallet.address, await get_nonce(http, base))
    signature = wallet.sign_1271(text)
    assert len(signature) == 65  # the owner's, not the wallet address's: the chain decides
    status, body = await login(http, base, text, "0x" + signature.hex())
    assert status == 200, body
    assert body["address"] == wallet.address
    async with http.get(f"{base}/auth/me", headers={"Authorization": f"Bearer {body['token']}"}) as resp:
        assert (await resp.json())["address"] == wallet.address


async def test_a_counterfactual_wallet_signs_in_with_6492_and_nothing_is_deployed(
    http: aiohttp.ClientSession, base: str, anvil: Anvil
) -> None:
    wallet = await ContractWallet(anvil).setup(deploy=False)
    assert await anvil.code(wallet.address) == "0x"
    block = await anvil.rpc("eth_blockNumber")
    # As a one-click flow writes it: the address in lower case, signed as sent.
    text = _text(wallet.address.lower(), await get_nonce(http, base))
    signature = wallet.sign_6492(text)
    assert len(signature) > 2 + 2 * 65  # longer than any key signature
    status, body = await login(http, base, text, signature)
    assert status == 200, body
    assert body["address"] == wallet.address  # checksummed
    assert await anvil.code(wallet.address) == "0x"  # the check deployed nothing
    assert await anvil.rpc("eth_blockNumber") == block  # and sent no transaction


@pytest.mark.parametrize("deployed", [True, False])
async def test_another_owners_signature_is_refused(
    http: aiohttp.ClientSession, base: str, anvil: Anvil, deployed: bool
) -> None:
    wallet = await ContractWallet(anvil).setup(deploy=deployed)
    intruder = Wallet().account
    nonce = await get_nonce(http, base)
    text = _text(wallet.address, nonce)
    forged = ("0x" + wallet.sign_1271(text, intruder).hex()) if deployed else wallet.sign_6492(text, intruder)
    status, body = await login(http, base, text, forged)
    assert (status, body["error"]) == (401, "invalid_signature"), body
    assert f"chain id {CHAIN_ID}" in body["message"] and "malformed" not in body["message"]
    # The nonce is consumed only by a sign-in that passes: the owner's still works.
    good = ("0x" + wallet.sign_1271(text).hex()) if deployed else wallet.sign_6492(text)
    assert (await login(http, base, text, good))[0] == 200


async def test_a_6492_wrapper_for_another_address_is_refused(
    http: aiohttp.ClientSession, base: str, anvil: Anvil
) -> None:
    """The factory call deploys some wallet, not the message's address: no."""
    wallet = await ContractWallet(anvil).setup(deploy=False)
    other = await ContractWallet(anvil).setup(deploy=False)
    text = _text(other.address, await get_nonce(http, base))
    status, body = await login(http, base, text, wallet.sign_6492(text))
    assert (status, body["error"]) == (401, "invalid_signature"), body


async def test_an_rpc_that_is_down_is_503_never_a_sign_in(
    http: aiohttp.ClientSession, cluster: Cluster
) -> None:
    base = await _base(cluster, {CHAIN_ID: f"http://127.0.0.1:{free_port()}/key/SECRETKEY"})
    text = _text(Wallet().address, await get_nonce(http, base))
    # Not the address's key signature: only the chain could say yes, and it cannot answer.
    status, body = await login(http, base, text, Wallet().sign(text))
    assert (status, body["error"]) == (503, "unavailable"), body
    assert f"chain {CHAIN_ID}" in body["message"] and "SECRETKEY" not in body["message"]


async def test_a_key_still_signs_in_with_anvil_configured(
    http: aiohttp.ClientSession, cluster: Cluster, anvil: Anvil
) -> None:
    base = await _base(cluster, {CHAIN_ID: anvil.url})
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base), chain_id=CHAIN_ID).to_text()
    status, body = await login(http, base, text, wallet.sign(text))
    assert status == 200, body
    assert body["address"] == wallet.address


async def test_a_key_signs_in_while_the_rpc_is_down(http: aiohttp.ClientSession, cluster: Cluster) -> None:
    """A key's own signature needs no chain: no call is made for it."""
    base = await _base(cluster, {CHAIN_ID: f"http://127.0.0.1:{free_port()}/"})
    wallet = Wallet()
    text = wallet.message(await get_nonce(http, base), chain_id=CHAIN_ID).to_text()
    status, body = await login(http, base, text, wallet.sign(text))
    assert status == 200, body
    assert body["address"] == wallet.address


async def test_without_an_rpc_for_the_chain_the_refusal_says_what_to_configure(
    http: aiohttp.ClientSession, cluster: Cluster
) -> None:
    base = await _base(cluster, {CHAIN_ID: f"http://127.0.0.1:{free_port()}/"})
    for signature in ("0x" + "11" * 65, "0x" + "ab" * 900 + erc6492.MAGIC_SUFFIX.hex()):
        text = _text(Wallet().address, await get_nonce(http, base), chain_id=8453)
        status, body = await login(http, base, text, signature)
        assert (status, body["error"]) == (401, "invalid_signature"), body
        assert "RUNNER_CHAIN_RPC_URLS" in body["message"] and "chain id 8453" in body["message"]
        assert "malformed" not in body["message"]


async def test_the_zero_address_never_signs_in(http: aiohttp.ClientSession, base: str, anvil: Anvil) -> None:
    """ecrecover answers address(0) for a signature it cannot recover, so the validator's
    key fallback "verifies" any such signature for the zero address."""
    zero = "0x" + "00" * 20
    for signature in ("0x" + "00" * 64 + "1b", "0x" + "00" * 64 + "1c", "0x" + "11" * 32 + "00" * 32 + "1b"):
        text = _text(zero, await get_nonce(http, base))
        status, body = await login(http, base, text, signature)
        assert (status, body["error"]) == (401, "invalid_signature"), body
