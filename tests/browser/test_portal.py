"""The portal's flows in Chromium, against a real service, real sign-in and a fake GPU that
holds its calls open: what a person does, and what the backend sees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser, expect

from runner.fakes import FakeProviders
from tests.browser.conftest import Portal, open_portal
from tests.client import wait_event
from tests.conftest import Cluster
from tests.wallets import Wallet

HOLD = {"backend": "gpu", "input": {"mode": "hold"}}


async def _running(portal: Portal, job: dict[str, Any], fake: FakeProviders) -> str:
    """Wait until the job runs at the fake and the page shows it running; its execution id."""
    execution_id: str = job["executions"][0]["id"]
    await wait_event(fake.web.started[execution_id])
    await expect(portal.job(job["id"])).to_have_attribute("data-status", "running")
    return execution_id


async def test_sign_in_submit_watch_and_cancel_through_the_dialog(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    page = await portal.sign_in()
    # Signed in: the short checksummed address, a Sign out button, a message for this host.
    address = portal.wallet.address
    await expect(page.locator("#address")).to_have_text(f"{address[:6]}…{address[-4:]}")
    assert portal.signatures[0].startswith(f"127.0.0.1:{portal.runtime.port} wants you to sign in")
    assert f"\n{address}\n" in portal.signatures[0]  # EIP-55, though the wallet gave lowercase

    await page.get_by_label("Backend").select_option("gpu")
    await page.get_by_label("Input (JSON)").fill('{"mode": "hold"}')
    await page.get_by_role("button", name="Submit job").click()
    await expect(page.get_by_role("status")).to_contain_text("submitted")
    job_id = await page.locator("[data-job-id]").first.get_attribute("data-job-id")
    assert job_id is not None
    job = await (await portal.api()).job(job_id)
    execution_id = await _running(portal, job, fake_gpu)
    item = portal.job(job_id)
    await expect(item.locator(".job-id")).to_have_text(job_id[:8])
    await expect(item.locator(".job-head .status")).to_have_text("running")
    # One execution alone is cancelled with its job: the job offers one Cancel button.
    await expect(item.get_by_role("button", name="Cancel")).to_have_count(1)
    await page.evaluate("window.__notReloaded = true")

    await item.get_by_role("button", name="Cancel", exact=True).click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await expect(item.get_by_role("button", name="Cancelling…")).to_be_disabled()
    assert not fake_gpu.web.closed[execution_id].is_set()  # nothing stops before the confirmation
    await dialog.get_by_role("button", name="Cancel job").click()

    await wait_event(fake_gpu.web.closed[execution_id])  # the backend's connection closed
    await expect(item.locator(".job-head .status")).to_have_text("cancelled")
    await expect(page.get_by_role("status")).to_contain_text(f"Job {job_id[:8]} cancelled")
    await expect(item.get_by_role("button", name="Re-run")).to_be_visible()
    assert await page.evaluate("window.__notReloaded") is True  # changed in place
    assert portal.problems == []


async def test_a_dismissed_dialog_cancels_nothing_and_the_keyboard_alone_cancels(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    page = await portal.sign_in()
    job = await (await portal.api()).submit(HOLD)  # from a script: it appears live
    execution_id = await _running(portal, job, fake_gpu)
    cancel = portal.job(job["id"]).get_by_role("button", name="Cancel", exact=True)

    for _ in range(60):  # Tab through the page until the job's Cancel has the focus
        if await cancel.evaluate("b => b === document.activeElement"):
            break
        await page.keyboard.press("Tab")
    else:
        raise AssertionError("Tab never reached the job's Cancel button")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("dialog")).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(page.get_by_role("dialog")).to_be_hidden()
    await expect(cancel).to_be_enabled()
    await expect(cancel).to_be_focused()
    assert not fake_gpu.web.closed[execution_id].is_set()

    await page.keyboard.press("Enter")
    await expect(page.get_by_role("dialog").get_by_role("button", name="Keep running")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("dialog").get_by_role("button", name="Cancel job")).to_be_focused()
    await page.keyboard.press("Enter")
    await wait_event(fake_gpu.web.closed[execution_id])
    await expect(portal.job(job["id"])).to_have_attribute("data-status", "cancelled")
    assert portal.problems == []


async def test_cancel_one_execution_and_the_rest_go_on(portal: Portal, fake_gpu: FakeProviders) -> None:
    page = await portal.sign_in()
    job = await (await portal.api()).submit(HOLD, HOLD)
    first, second = (execution["id"] for execution in job["executions"])
    await wait_event(fake_gpu.web.started[first])
    await wait_event(fake_gpu.web.started[second])
    row = page.locator(f'li[data-execution-id="{first}"]')
    await row.get_by_role("button", name="Cancel execution").click()
    await page.get_by_role("dialog").get_by_role("button", name="Cancel execution").click()
    await wait_event(fake_gpu.web.closed[first])
    await expect(row).to_have_attribute("data-status", "cancelled")
    assert not fake_gpu.web.closed[second].is_set()
    await expect(portal.job(job["id"])).to_have_attribute("data-status", "running")
    await expect(page.locator(f'li[data-execution-id="{second}"]')).to_have_attribute(
        "data-status", "running"
    )


async def test_cancel_all_after_a_confirmation(portal: Portal, fake_gpu: FakeProviders) -> None:
    page = await portal.sign_in()
    api = await portal.api()
    jobs = [await api.submit(HOLD) for _ in range(3)]
    executions = [await _running(portal, job, fake_gpu) for job in jobs]
    await page.get_by_role("button", name="Cancel all").click()
    await page.get_by_role("dialog").get_by_role("button", name="Cancel all jobs").click()
    for execution_id in executions:
        await wait_event(fake_gpu.web.closed[execution_id])
    for job in jobs:
        await expect(portal.job(job["id"])).to_have_attribute("data-status", "cancelled")
    await expect(page.get_by_role("status")).to_contain_text("3 job(s) cancelled")


async def test_rerun_a_cancelled_job_and_read_its_output(portal: Portal, fake_gpu: FakeProviders) -> None:
    page = await portal.sign_in()
    api = await portal.api()
    job = await api.submit({"backend": "gpu", "input": {"mode": "hold", "n": 7}})
    await _running(portal, job, fake_gpu)
    status, _ = await api.cancel(job["id"], wait=True)
    assert status == 200
    await portal.job(job["id"]).get_by_role("button", name="Re-run").click()
    await expect(page.get_by_role("status")).to_contain_text("re-run as")
    rerun = page.locator("[data-job-id]").first
    rerun_id = await rerun.get_attribute("data-job-id")
    assert rerun_id is not None and rerun_id != job["id"]
    await expect(rerun).to_contain_text(f"re-run of {job['id'][:8]}")
    new_job = await api.job(rerun_id)
    assert new_job["rerun_of"] == job["id"]
    await wait_event(fake_gpu.web.started[new_job["executions"][0]["id"]])  # the backend was called again

    # The old job's audit trail, on demand, records the cancel and the re-run.
    await portal.job(job["id"]).get_by_role("button", name="Audit trail").click()
    audit = portal.job(job["id"]).locator(".audit")
    await expect(audit).to_contain_text("cancelled")
    await expect(audit).to_contain_text("rerun")


async def test_output_and_error_on_demand(portal: Portal, fake_gpu: FakeProviders) -> None:
    page = await portal.sign_in()
    api = await portal.api()
    done = await api.submit({"backend": "gpu", "input": {"note": "hello"}})
    failed = await api.submit({"backend": "gpu", "input": {"mode": "status", "status": 400}})
    await expect(portal.job(done["id"])).to_have_attribute("data-status", "completed")
    await expect(portal.job(failed["id"])).to_have_attribute("data-status", "failed")
    output = portal.job(done["id"]).locator("details", has_text="Output")
    await expect(output.locator("pre")).to_be_hidden()
    await output.locator("summary").click()
    await expect(output.locator("pre")).to_contain_text('"note": "hello"')
    error = portal.job(failed["id"]).locator("details", has_text="Error")
    await error.locator("summary").click()
    await expect(error.locator("pre")).to_contain_text("400")
    assert portal.problems == []
    del page


async def test_api_errors_are_shown_as_their_message(portal: Portal, http: aiohttp.ClientSession) -> None:
    page = await portal.sign_in()
    api = await portal.api()
    status, refusal = await api.call(
        "POST", "/jobs", json={"executions": [{"backend": "demo", "input": {}}], "timeout_s": 100000}
    )
    assert status == 400
    await page.get_by_label("Input (JSON)").fill("{}")
    await page.get_by_label("Timeout in seconds (optional)").fill("100000")
    await page.get_by_role("button", name="Submit job").click()
    await expect(page.get_by_role("alert")).to_have_text(refusal["message"])
    assert "{" not in refusal["message"]

    # Input that is not JSON never leaves the page.
    await page.get_by_label("Timeout in seconds (optional)").fill("")
    await page.get_by_label("Input (JSON)").fill("{oops")
    sent: list[str] = []
    page.on("request", lambda request: request.method == "POST" and sent.append(request.url))
    await page.get_by_role("button", name="Submit job").click()
    await expect(page.get_by_role("alert")).to_contain_text("not valid JSON")
    await expect(page.get_by_label("Input (JSON)")).to_be_focused()
    assert sent == []


async def test_load_more_pages_through_older_jobs(portal: Portal, fake_gpu: FakeProviders) -> None:
    api = await portal.api()
    for n in range(23):
        await api.submit({"backend": "gpu", "input": {"n": n}})
    page = await portal.sign_in()
    jobs = page.locator("[data-job-id]")
    await expect(jobs).to_have_count(20)
    await page.get_by_role("button", name="Load more").click()
    await expect(jobs).to_have_count(23)
    await expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    created = [await page.locator("[data-job-id]").nth(i).get_attribute("data-job-id") for i in range(23)]
    status, listed = await api.call("GET", "/jobs?limit=50")
    assert status == 200
    assert created == [job["id"] for job in listed["jobs"]]  # newest first, as the API lists


async def test_a_narrow_viewport_never_scrolls_sideways(
    cluster: Cluster, browser: Browser, http: aiohttp.ClientSession, fake_gpu: FakeProviders
) -> None:
    portal = await open_portal(cluster, browser, http, [Wallet()], width=375, height=740)
    try:
        page = await portal.sign_in()
        api = await portal.api()
        job = await api.submit(
            HOLD, {"backend": "gpu", "input": {"mode": "hold", "note": "x" * 300}, "name": "a-long-name-" * 5}
        )
        for execution in job["executions"]:
            await wait_event(fake_gpu.web.started[execution["id"]])
        await expect(portal.job(job["id"]).locator('li[data-status="running"]')).to_have_count(2)
        widths = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1] == 375, widths
        # Every control can be reached without scrolling sideways (read in one step: a job's
        # element is rebuilt whenever the stream brings a change).
        cancel = portal.job(job["id"]).get_by_role("button", name="Cancel", exact=True)
        left, right = await cancel.evaluate(
            "b => { b.scrollIntoView(); const r = b.getBoundingClientRect(); return [r.left, r.right]; }"
        )
        assert 0 <= left < right <= 375, (left, right)
    finally:
        await portal.context.close()


async def test_a_reload_keeps_the_list_and_acting_asks_the_wallet_again(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    page = await portal.sign_in()
    job = await (await portal.api()).submit(HOLD)
    execution_id = await _running(portal, job, fake_gpu)
    await page.reload()  # the token was in memory only; the cookie still reads the list
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await expect(portal.job(job["id"])).to_have_attribute("data-status", "running")
    assert await page.evaluate("Object.keys(localStorage).length + Object.keys(sessionStorage).length") == 0
    signed = len(portal.signatures)
    await portal.job(job["id"]).get_by_role("button", name="Cancel", exact=True).click()
    await page.get_by_role("dialog").get_by_role("button", name="Cancel job").click()
    await wait_event(fake_gpu.web.closed[execution_id])
    assert len(portal.signatures) == signed + 1


async def test_sign_out_revokes_the_session(portal: Portal) -> None:
    page = await portal.sign_in()
    assert await page.evaluate("fetch('/auth/me').then(r => r.status)") == 200
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("button", name="Sign in with Ethereum")).to_be_visible()
    await expect(page.locator("[data-job-id]")).to_have_count(0)
    assert await page.evaluate("fetch('/auth/me').then(r => r.status)") == 401
    await page.reload()
    await expect(page.get_by_role("button", name="Sign in with Ethereum")).to_be_visible()


async def test_several_wallets_announced_the_person_chooses(
    cluster: Cluster, browser: Browser, http: aiohttp.ClientSession
) -> None:
    portal = await open_portal(cluster, browser, http, [Wallet(), Wallet()])
    try:
        page = await portal.open()
        await page.get_by_role("button", name="Sign in with Ethereum").click()
        await page.get_by_role("dialog").get_by_role("button", name="Test Wallet 2").click()
        second = portal.wallets[1].address
        await expect(page.locator("#address")).to_have_text(f"{second[:6]}…{second[-4:]}")
    finally:
        await portal.context.close()


async def test_the_page_is_same_origin_only_under_a_strict_policy(portal: Portal) -> None:
    requests: list[str] = []
    portal.page.on("request", lambda request: requests.append(request.url))
    response = await portal.page.goto(portal.base_url + "/")
    assert response is not None and response.status == 200
    policy = response.headers["content-security-policy"]
    assert "unsafe-inline" not in policy and "script-src 'self'" in policy
    await portal.sign_in()
    assert requests and all(url.startswith(portal.base_url) or url.startswith("data:") for url in requests)
    assert portal.problems == []


async def test_eip55_checksums_match_eth_account(portal: Portal) -> None:
    page = await portal.open()
    addresses = [Wallet().address for _ in range(20)] + [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ]
    got = await page.evaluate(
        "async (xs) => { const w = await import('/portal/js/wallet.js');"
        " return xs.map((x) => w.toChecksumAddress(x.toLowerCase())); }",
        addresses,
    )
    assert got == addresses


async def test_screenshot_of_the_page(portal: Portal, fake_gpu: FakeProviders, tmp_path: Any) -> None:
    """The README's picture (written to docs/ when RUNNER_UPDATE_SCREENSHOT=1)."""
    api = await portal.api()
    done = await api.submit({"backend": "gpu", "input": {"prompt": "a lighthouse at dusk"}})
    await api.until(done["id"], "completed")
    cancelled = await api.submit(HOLD)
    held = await api.submit(HOLD, {"backend": "gpu", "input": {"mode": "hold", "steps": 50}})
    page = await portal.sign_in()
    await _running(portal, cancelled, fake_gpu)
    await api.cancel(cancelled["id"], wait=True)
    await _running(portal, held, fake_gpu)
    await expect(portal.job(cancelled["id"])).to_have_attribute("data-status", "cancelled")
    await portal.job(done["id"]).locator("summary").click()
    await portal.job(cancelled["id"]).get_by_role("button", name="Audit trail").click()
    await expect(portal.job(cancelled["id"]).locator(".audit")).to_contain_text("cancelled")
    await expect(page.locator(".spend-total")).not_to_have_text("0.00 GPU-s")  # the cancelled job's spend
    # No stray text (a "null" once) between a job's parts.
    assert await page.locator(".job").evaluate_all(
        "js => js.every(j => [...j.childNodes].every(n => n.nodeType === 1))"
    )
    target = (
        Path(__file__).parents[2] / "docs" / "portal.png"
        if os.environ.get("RUNNER_UPDATE_SCREENSHOT") == "1"
        else tmp_path / "portal.png"
    )
    target.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(target), full_page=True)
    assert target.read_bytes().startswith(b"\x89PNG") and target.stat().st_size > 20_000


async def test_a_late_reply_never_turns_a_job_back(portal: Portal, fake_gpu: FakeProviders) -> None:
    """The submit's reply (queued) held until the stream has shown the job running: the
    reply must not put the page back to queued (found by the suite, once, on 2 cores)."""
    page = await portal.sign_in()

    async def hold_reply(route: Any) -> None:
        response = await route.fetch()
        job = await response.json()
        await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
        await expect(portal.job(job["id"])).to_have_attribute("data-status", "running")
        await route.fulfill(response=response)

    await page.route("**/jobs", hold_reply)
    await page.get_by_label("Backend").select_option("gpu")
    await page.get_by_label("Input (JSON)").fill('{"mode": "hold"}')
    await page.get_by_role("button", name="Submit job").click()
    await expect(page.get_by_role("status")).to_contain_text("submitted")  # the reply was read
    await expect(page.locator("[data-job-id]")).to_have_attribute("data-status", "running")


async def test_spend_is_shown_as_the_usage_route_reports_it(portal: Portal, fake_gpu: FakeProviders) -> None:
    page = await portal.sign_in()
    await expect(page.locator("#spend-totals")).to_contain_text("Jobs0")
    api = await portal.api()
    job = await api.submit({"backend": "gpu", "input": {"mode": "slow", "seconds": 0.3}})
    await expect(portal.job(job["id"])).to_have_attribute("data-status", "completed")
    status, usage = await api.call("GET", "/usage")
    assert status == 200 and usage["gpu_seconds"] >= 0.3
    # Refreshed by itself once the job finished, in the page's format.
    await expect(page.locator(".spend-total")).to_have_text(f"{usage['gpu_seconds']:.2f} GPU-s")
    await expect(page.locator("#spend-backends")).to_contain_text("gpu")
    assert portal.problems == []


async def test_the_page_follows_the_systems_scheme_and_motion(portal: Portal) -> None:
    page = await portal.open()
    background = "getComputedStyle(document.body).backgroundColor"
    await page.emulate_media(color_scheme="light")
    light = await page.evaluate(background)
    await page.emulate_media(color_scheme="dark")
    dark = await page.evaluate(background)
    assert light != dark, (light, dark)
    assert sum(int(c) for c in dark[4:-1].split(",")) < sum(int(c) for c in light[4:-1].split(","))
    # A toast slides in, unless the system asks for less motion.
    toast = (
        "(() => { const t = document.createElement('p'); t.className = 'toast';"
        " document.getElementById('toasts').append(t); return getComputedStyle(t).animationName; })()"
    )
    await page.emulate_media(reduced_motion="no-preference")
    assert await page.evaluate(toast) == "toast-in"
    await page.emulate_media(reduced_motion="reduce")
    assert await page.evaluate(toast) == "none"


async def test_the_submit_form_sends_a_webhook(portal: Portal) -> None:
    page = await portal.sign_in()
    await page.get_by_label("Input (JSON)").fill("{}")
    await page.get_by_label("Webhook URL (optional)").fill("not a url")
    await page.get_by_role("button", name="Submit job").click()
    await expect(page.get_by_role("alert")).to_contain_text("webhook")
    await expect(page.get_by_label("Webhook URL (optional)")).to_be_focused()
    # The service resolves the host and refuses a loopback one: its message is shown.
    await page.get_by_label("Webhook URL (optional)").fill("https://127.0.0.1/hook")
    await page.get_by_role("button", name="Submit job").click()
    await expect(page.get_by_role("alert")).to_contain_text("'webhook' host '127.0.0.1' resolves to")
