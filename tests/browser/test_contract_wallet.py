"""A contract wallet signs in through the portal's own flow: its personal_sign returns an
ERC-6492 signature hundreds of bytes long, which the page sends as it is, and the service
checks on a real node (anvil)."""

from __future__ import annotations

import aiohttp
from playwright.async_api import Browser, expect

from tests.browser.conftest import open_portal
from tests.chain import CHAIN_ID, Anvil, ContractWallet
from tests.conftest import Cluster


async def test_a_counterfactual_contract_wallet_signs_in_on_the_page(
    cluster: Cluster, browser: Browser, http: aiohttp.ClientSession, anvil: Anvil
) -> None:
    wallet = await ContractWallet(anvil).setup(deploy=False)
    portal = await open_portal(
        cluster,
        browser,
        http,
        [],
        chain_id=CHAIN_ID,
        contract_wallets={wallet.address: wallet.sign_6492},
        chain_rpc_urls={CHAIN_ID: anvil.url},
    )
    try:
        page = await portal.sign_in()
        await expect(page.locator("#address")).to_have_text(f"{wallet.address[:6]}…{wallet.address[-4:]}")
        [signed] = portal.signatures
        assert wallet.address in signed and f"Chain ID: {CHAIN_ID}" in signed.split("\n")
        assert (
            await page.evaluate("fetch('/auth/me').then(r => r.json()).then(me => me.address)")
            == wallet.address
        )
        assert await anvil.code(wallet.address) == "0x"  # signing in deployed nothing
        assert portal.problems == []
    finally:
        await portal.context.close()


async def test_without_the_chains_rpc_the_page_says_what_to_configure(
    cluster: Cluster, browser: Browser, http: aiohttp.ClientSession, anvil: Anvil
) -> None:
    wallet = await ContractWallet(anvil).setup(deploy=True)
    portal = await open_portal(
        cluster,
        browser,
        http,
        [],
        chain_id=CHAIN_ID,
        contract_wallets={wallet.address: lambda text: "0x" + wallet.sign_1271(text).hex()},
    )
    try:
        page = await portal.open()
        await page.get_by_role("button", name="Sign in with Ethereum").click()
        await expect(page.get_by_role("status")).to_contain_text(
            f"RUNNER_CHAIN_RPC_URLS to name chain id {CHAIN_ID}"
        )
        await expect(page.get_by_role("button", name="Sign in with Ethereum")).to_be_visible()
    finally:
        await portal.context.close()
