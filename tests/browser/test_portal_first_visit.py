"""The portal on a first visit and on a phone: no wallet, narrow widths, toasts, hints."""

from __future__ import annotations

import re

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from tests.browser.conftest import Portal, open_portal
from tests.conftest import Cluster
from tests.wallets import Wallet


async def test_without_a_wallet_a_lasting_note_names_wallets_and_the_cli(
    cluster: Cluster, browser: Browser, http: aiohttp.ClientSession
) -> None:
    portal = await open_portal(cluster, browser, http, [], width=375, height=740)
    try:
        page = await portal.open()
        await page.get_by_role("button", name="Sign in with Ethereum").click()
        note = page.locator("#no-wallet")
        await expect(note).to_be_visible()
        await expect(note).to_contain_text("MetaMask")
        # The CLI needs no browser wallet: the command, for this very service.
        await expect(note).to_contain_text(re.compile(r"runner --api-url http://127\.0\.0\.1:\d+ login"))
        # A page element, not a toast: it stays until a wallet appears.
        assert await page.locator("#toasts #no-wallet").count() == 0
        assert await note.evaluate("n => n.closest('#toasts') === null")
    finally:
        await portal.context.close()


@pytest.mark.parametrize(("width", "jobs_first"), [(375, True), (1280, False)])
async def test_at_narrow_widths_the_jobs_come_before_the_form(
    cluster: Cluster, browser: Browser, http: aiohttp.ClientSession, width: int, jobs_first: bool
) -> None:
    portal = await open_portal(cluster, browser, http, [Wallet()], width=width, height=800)
    try:
        page = await portal.sign_in()
        jobs = await page.locator(".jobs-panel").bounding_box()
        form = await page.locator("#submit-form").bounding_box()
        assert jobs is not None and form is not None
        if jobs_first:
            assert jobs["y"] < form["y"], (jobs, form)
        else:  # side by side: the form on the left, the jobs beside it
            assert form["x"] < jobs["x"] and abs(form["y"] - jobs["y"]) < 2, (jobs, form)
    finally:
        await portal.context.close()


async def test_toasts_collapse_to_the_latest_two(portal: Portal) -> None:
    page = await portal.open()
    await page.evaluate(
        "import('/portal/js/dialogs.js').then((m) => { for (const n of [1, 2, 3, 4]) m.toast(`note ${n}`); })"
    )
    toasts = page.locator("#toasts .toast")
    await expect(toasts).to_have_count(2)
    await expect(toasts.last).to_have_text("note 4")


async def test_the_input_shows_an_example_for_the_chosen_backends_kind(portal: Portal) -> None:
    page = await portal.sign_in()
    select = page.locator("select[name=backend]").first
    field = page.locator("textarea[name=input]").first
    await select.select_option("demo")
    await expect(field).to_have_attribute("placeholder", '{"seconds": 5}')
    await select.select_option("rp")
    placeholder = await field.get_attribute("placeholder")
    assert placeholder and placeholder != '{"seconds": 5}' and "prompt" in placeholder


async def test_the_audit_trail_reads_as_words_with_json_on_demand(portal: Portal) -> None:
    await portal.sign_in()
    api = await portal.api()
    job = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    status, _ = await api.cancel(job["id"], reason="changed my mind")
    assert status == 200
    address = portal.wallet.address
    short = f"{address[:6]}…{address[-4:]}"
    entry = portal.job(job["id"])
    await expect(entry).to_have_attribute("data-status", "cancelled")
    await entry.get_by_role("button", name="Audit trail").click()
    trail = entry.locator(".audit")
    await expect(trail).to_contain_text(f"cancelled by {short}: changed my mind")
    raw = trail.locator("li", has_text="cancelled by").locator("pre").first
    await expect(raw).to_be_hidden()  # the JSON only on demand
    await trail.locator("li", has_text="cancelled by").locator("summary").first.click()
    await expect(raw).to_be_visible()
    await expect(raw).to_contain_text('"previous_status"')
