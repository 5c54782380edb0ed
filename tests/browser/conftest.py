"""The portal in a real browser: Playwright for Python driving the system's Chromium.

The browser is found from RUNNER_TEST_CHROMIUM or the system path (Debian's `chromium`);
browser downloads are not needed. Without one these tests are skipped with the reason,
unless RUNNER_REQUIRE_BROWSER=1 (CI sets it), where a missing browser is a failure."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from eth_account.messages import encode_defunct
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from runner.runtime import Runtime
from tests.client import Api, free_port
from tests.conftest import Cluster
from tests.wallets import Wallet

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The closed network refuses Chromium's own background connections; these keep it quiet.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
expect.set_options(timeout=10_000)


def chromium_path() -> str | None:
    explicit = os.environ.get("RUNNER_TEST_CHROMIUM")
    if explicit:
        return explicit if os.path.exists(explicit) else None
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    if path is None:
        reason = (
            "no Chromium for the browser tests: `apt-get install chromium`, "
            "or set RUNNER_TEST_CHROMIUM to a Chromium or Chrome binary"
        )
        if os.environ.get("RUNNER_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


# An EIP-1193 wallet announced through EIP-6963 (and as window.ethereum). It answers with a
# lowercase address, as MetaMask does, and signs through a function exposed from Python
# (a key's 65 bytes, or a contract wallet's long signature: personal_sign returns either).
WALLET_SCRIPT = """
(() => {
  const wallets = %s;
  const providers = wallets.map((w) => ({
    info: { uuid: w.uuid, name: w.name, rdns: w.rdns,
            icon: "data:image/svg+xml,%%3Csvg xmlns='http://www.w3.org/2000/svg'/%%3E" },
    provider: {
      async request({ method, params }) {
        if (method === "eth_requestAccounts" || method === "eth_accounts") return [w.address];
        if (method === "eth_chainId") return w.chainId;
        if (method === "personal_sign") return window.__testWalletSign(params[0], params[1]);
        throw Object.assign(new Error(`unsupported: ${method}`), { code: 4200 });
      },
    },
  }));
  if (providers.length) window.ethereum = providers[0].provider;
  const announce = () => {
    for (const p of providers) {
      window.dispatchEvent(new CustomEvent("eip6963:announceProvider", { detail: Object.freeze(p) }));
    }
  };
  window.addEventListener("eip6963:requestProvider", announce);
  announce();
})();
"""


@dataclass
class Portal:
    """The service, a browser context with a test wallet in it, and that wallet's API client."""

    runtime: Runtime
    base_url: str
    context: BrowserContext
    page: Page
    wallets: list[Wallet]
    http: aiohttp.ClientSession
    signatures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # console errors, CSP violations, page errors

    @property
    def wallet(self) -> Wallet:
        return self.wallets[0]

    async def api(self, wallet: Wallet | None = None) -> Api:
        return await Api.signed_in(self.http, self.base_url, wallet or self.wallet)

    async def open(self) -> Page:
        await self.page.goto(self.base_url + "/")
        await expect(self.page.locator("body")).to_have_attribute("data-ready", "true")
        return self.page

    async def sign_in(self) -> Page:
        page = await self.open()
        await page.get_by_role("button", name="Sign in with Ethereum").click()
        await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        return page

    def job(self, job_id: str) -> Any:
        return self.page.locator(f'[data-job-id="{job_id}"]')


Signer = Callable[[str], str]  # a message's text -> its signature, as personal_sign returns it


def _key_signer(wallet: Wallet) -> Signer:
    def sign(text: str) -> str:
        return "0x" + bytes(wallet.account.sign_message(encode_defunct(text=text)).signature).hex()

    return sign


async def open_portal(
    cluster: Cluster,
    browser: Browser,
    http: aiohttp.ClientSession,
    wallets: list[Wallet],
    *,
    width: int = 1280,
    height: int = 900,
    chain_id: int = 1,
    contract_wallets: Mapping[str, Signer] | None = None,
    **changes: Any,
) -> Portal:
    """The portal with test wallets in the browser: keys (`wallets`), and contract wallets
    (address -> signer) after them; `changes` go to the service's settings."""
    port = free_port()
    runtime = await cluster.start(port=port, siwe_domains=("runner.test", f"127.0.0.1:{port}"), **changes)
    context = await browser.new_context(viewport={"width": width, "height": height})
    portal = Portal(runtime, f"http://127.0.0.1:{port}", context, await context.new_page(), wallets, http)
    signers = {wallet.address.lower(): _key_signer(wallet) for wallet in wallets}
    signers.update({address.lower(): signer for address, signer in (contract_wallets or {}).items()})

    def sign(_source: Any, message_hex: str, address: str) -> str:
        text = bytes.fromhex(message_hex.removeprefix("0x")).decode()
        portal.signatures.append(text)
        return signers[address.lower()](text)

    await context.expose_binding("__testWalletSign", sign)
    described = [
        {
            "uuid": f"wallet-{n}",
            "name": f"Test Wallet {n + 1}",
            "rdns": f"test.wallet{n}",
            "address": address,
            "chainId": hex(chain_id),
        }
        for n, address in enumerate(signers)
    ]
    await context.add_init_script(WALLET_SCRIPT % json.dumps(described))
    # A failed load (a 401 before sign-in) is logged by the browser too; what counts here is
    # what the page would break on: a refused script or style, or an uncaught error.
    portal.page.on(
        "console",
        lambda msg: msg.type == "error" and "Refused to" in msg.text and portal.problems.append(msg.text),
    )
    portal.page.on("pageerror", lambda exc: portal.problems.append(str(exc)))
    return portal


@pytest.fixture
async def portal(cluster: Cluster, browser: Browser, http: aiohttp.ClientSession) -> AsyncIterator[Portal]:
    opened = await open_portal(cluster, browser, http, [Wallet()])
    yield opened
    await opened.context.close()
