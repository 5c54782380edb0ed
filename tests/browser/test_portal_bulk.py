"""The portal's tools for many jobs, in Chromium against a real service: the filter, the
selection and its cancel, cancel-all-matching with its dry-run count, a reason in every
cancel dialog, the time display, and the remote cancel's state in words."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from playwright.async_api import Browser, Page, expect

from runner.fakes import FakeProviders
from tests.browser.conftest import Portal, open_portal
from tests.browser.test_portal import HOLD, _running
from tests.client import wait_event
from tests.conftest import Cluster
from tests.wallets import Wallet

RECENT = re.compile(r"^(just now|\d+ s ago)$")  # relative, for a job made seconds ago


def _gpu_s(seconds: float) -> str:
    """The page's GPU-seconds format (view.js formatGpu)."""
    return f"{seconds:.{2 if seconds < 10 else 1}f} GPU-s"


async def _focus_by_tab(page: Page, target: Any, limit: int = 80) -> None:
    for _ in range(limit):
        if await target.evaluate("n => n === document.activeElement"):
            return
        await page.keyboard.press("Tab")
    raise AssertionError("Tab never reached the control")


async def test_the_reason_typed_in_the_job_dialog_is_the_jobs_cancel_reason(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    page = await portal.sign_in()
    api = await portal.api()
    job = await api.submit(HOLD)
    execution_id = await _running(portal, job, fake_gpu)
    await portal.job(job["id"]).get_by_role("button", name="Cancel", exact=True).click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label("Reason (optional)").fill("wrong prompt")
    await dialog.get_by_role("button", name="Cancel job").click()
    await wait_event(fake_gpu.web.closed[execution_id])
    await expect(portal.job(job["id"])).to_have_attribute("data-status", "cancelled")
    await expect(portal.job(job["id"]).locator(".cancel-reason")).to_have_text(" (wrong prompt)")
    assert (await api.job(job["id"]))["cancel_reason"] == "wrong prompt"

    # The next dialog starts empty: a reason is never carried over to another cancel.
    other = await api.submit(HOLD)
    await _running(portal, other, fake_gpu)
    await portal.job(other["id"]).get_by_role("button", name="Cancel", exact=True).click()
    await expect(dialog.get_by_label("Reason (optional)")).to_have_value("")
    await dialog.get_by_role("button", name="Cancel job").click()
    await expect(portal.job(other["id"])).to_have_attribute("data-status", "cancelled")
    assert (await api.job(other["id"]))["cancel_reason"] is None
    assert portal.problems == []


async def test_the_execution_and_cancel_all_dialogs_send_their_reason(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    page = await portal.sign_in()
    api = await portal.api()
    job = await api.submit(HOLD, HOLD)
    first = job["executions"][0]["id"]
    await wait_event(fake_gpu.web.started[first])
    row = page.locator(f'li[data-execution-id="{first}"]')
    await row.get_by_role("button", name="Cancel execution").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label("Reason (optional)").fill("one is enough")
    await dialog.get_by_role("button", name="Cancel execution").click()
    await expect(row).to_have_attribute("data-status", "cancelled")
    status, audit = await api.call("GET", f"/jobs/{job['id']}/audit")
    assert status == 200
    reasons = [e["detail"].get("reason") for e in audit["events"] if e["kind"] == "execution_cancelled"]
    assert reasons == ["one is enough"], audit

    await page.get_by_role("button", name="Cancel all", exact=True).click()
    await dialog.get_by_label("Reason (optional)").fill("end of the day")
    await dialog.get_by_role("button", name="Cancel all jobs").click()
    await expect(portal.job(job["id"])).to_have_attribute("data-status", "cancelled")
    assert (await api.job(job["id"]))["cancel_reason"] == "end of the day"


async def test_the_dialog_keeps_the_keyboard_inside_and_escape_leaves(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    page = await portal.sign_in()
    job = await (await portal.api()).submit(HOLD)
    execution_id = await _running(portal, job, fake_gpu)
    cancel = portal.job(job["id"]).get_by_role("button", name="Cancel", exact=True)
    await _focus_by_tab(page, cancel)
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    reason = dialog.get_by_label("Reason (optional)")
    keep = dialog.get_by_role("button", name="Keep running")
    confirm = dialog.get_by_role("button", name="Cancel job")
    await expect(keep).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(confirm).to_be_focused()
    await page.keyboard.press("Tab")  # round to the first control, never out of the dialog
    await expect(reason).to_be_focused()
    await page.keyboard.press("Shift+Tab")
    await expect(confirm).to_be_focused()
    # Enter in the reason box does not confirm.
    await reason.focus()
    await page.keyboard.type("typed, then thought better")
    await page.keyboard.press("Enter")
    await expect(dialog).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(cancel).to_be_focused()
    assert not fake_gpu.web.closed[execution_id].is_set()


async def test_times_relative_or_absolute_and_the_choice_is_remembered(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    api = await portal.api()
    job = await api.submit({"backend": "gpu", "input": {}})
    await api.until(job["id"], "completed")
    page = await portal.sign_in()
    when = portal.job(job["id"]).locator(".job-head time")
    absolute = await page.evaluate("(iso) => new Date(iso).toLocaleString()", job["created_at"])
    await expect(when).to_have_attribute("datetime", job["created_at"])
    await expect(when).to_have_text(RECENT)  # relative by default, the other in the tooltip
    await expect(when).to_have_attribute("title", absolute)
    assert await page.evaluate("localStorage.length") == 0  # nothing stored before a choice

    await page.get_by_label("Times").select_option("absolute")
    await expect(when).to_have_text(absolute)
    await expect(when).to_have_attribute("title", RECENT)
    await page.reload()
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await expect(page.get_by_label("Times")).to_have_value("absolute")
    await expect(portal.job(job["id"]).locator(".job-head time")).to_have_text(absolute)

    await page.get_by_label("Times").select_option("relative")
    await expect(portal.job(job["id"]).locator(".job-head time")).to_have_text(RECENT)
    assert await page.evaluate("localStorage.getItem('runner.times')") == "relative"
    assert portal.problems == []


async def test_the_remote_cancel_in_words_and_the_gpu_time_after_it(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    page = await portal.sign_in()
    api = await portal.api()
    job = await api.submit(HOLD)  # `gpu`: an http backend with a cancel_url
    await _running(portal, job, fake_gpu)
    status, _ = await api.cancel(job["id"], wait=True)
    assert status == 200
    done = await api.until_execution(
        job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged" and e["remote_stopped_at"]
    )
    execution = done["executions"][0]
    row = page.locator(f'li[data-execution-id="{execution["id"]}"]')
    await expect(row.locator(".remote")).to_have_text("remote cancel: acknowledged")
    await expect(row.locator(".remote-note")).to_contain_text("accepted the cancel request")
    await expect(row.locator(".remote-note")).to_contain_text("up to it")
    # The work after the cancel: from finished_at (the cancel) to remote_stopped_at (seen over).
    after = await page.evaluate(
        "([f, s]) => Math.max(0, (Date.parse(s) - Date.parse(f)) / 1000)",
        [execution["finished_at"], execution["remote_stopped_at"]],
    )
    await expect(row.locator(".after-cancel")).to_have_text(f"{_gpu_s(after)} after the cancel")


async def test_each_remote_cancel_state_is_explained_for_its_provider(portal: Portal) -> None:
    page = await portal.open()
    words = await page.evaluate(
        """async () => {
          const r = await import('/portal/js/remote.js');
          r.setBackendKinds([{name: 'rp', kind: 'runpod'}, {name: 'rep', kind: 'replicate'},
                             {name: 'fal', kind: 'fal'}, {name: 'sh', kind: 'subprocess'}]);
          const say = (backend, remote_cancel) => r.explainRemoteCancel({backend, remote_cancel});
          return {rpAck: say('rp', 'acknowledged'), repOk: say('rep', 'confirmed'),
                  falOk: say('fal', 'confirmed'), shOk: say('sh', 'confirmed'), gone: say('rep', 'gone'),
                  failed: say('rp', 'failed'), pending: say('fal', 'pending'), none: say('rp', null)};
        }"""
    )
    assert "proves no stop" in words["rpAck"] and "executionTimeout" in words["rpAck"]
    assert "completed_at" in words["repOk"]
    assert "finished on its own" in words["falOk"]
    assert words["shOk"].startswith("Stopped here")
    assert "no longer knows" in words["gone"]
    assert "refused" in words["failed"]
    assert "owed" in words["pending"]
    assert words["none"] is None


async def test_search_by_the_start_of_an_id_and_the_stream_adds_no_other_job(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    api = await portal.api()
    jobs = [await api.submit({"backend": "gpu", "input": {"n": n}}) for n in range(3)]
    held = await api.submit(HOLD)
    page = await portal.sign_in()
    rows = page.locator("[data-job-id]")
    await expect(rows).to_have_count(4)
    target = held["id"]
    await page.get_by_label("Search").fill(target[:6])
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-job-id", target)
    later = await api.submit({"backend": "gpu", "input": {"later": True}})
    await api.until(later["id"], "completed")
    # The stream brings the later job before the target's cancel: once the cancel shows,
    # the later job has been seen, and was not added.
    await _running(portal, held, fake_gpu)
    await api.cancel(target)
    await expect(portal.job(target)).to_have_attribute("data-status", "cancelled")
    await expect(rows).to_have_count(1)

    await page.get_by_label("Search").fill("not-an-id!")
    await expect(page.get_by_role("alert")).to_contain_text("neither an id")
    await page.get_by_role("button", name="Clear filter").click()
    await expect(rows).to_have_count(5)
    await expect(page.get_by_role("button", name="Clear filter")).to_be_hidden()
    del jobs


async def test_status_backend_metadata_and_id_filters_reload_the_list(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    api = await portal.api()
    running = await api.submit(HOLD, metadata={"project": "apollo"})
    on_demo = await api.submit({"backend": "demo", "input": {"seconds": 0}}, metadata={"project": "zeus"})
    done = await api.submit({"backend": "gpu", "input": {}}, metadata={"project": "apollo"})
    await api.until(on_demo["id"], "completed")
    await api.until(done["id"], "completed")
    page = await portal.sign_in()
    rows = page.locator("[data-job-id]")
    await _running(portal, running, fake_gpu)
    await expect(rows).to_have_count(3)

    async def shown() -> list[str | None]:
        return [await rows.nth(i).get_attribute("data-job-id") for i in range(await rows.count())]

    requested: list[str] = []
    page.on("request", lambda r: "/jobs?" in r.url and requested.append(r.url))
    await page.get_by_label("Status").select_option("running")
    await expect(rows).to_have_count(1)
    assert await shown() == [running["id"]]
    assert "statuses=running" in requested[-1]  # the service filters, not the page

    # The stream adds only what matches. Under "completed", a job held running is not added;
    # once a later job shows (completed), the held one's events have been read too.
    await page.get_by_label("Status").select_option("completed")
    await expect(rows).to_have_count(2)
    held = await api.submit(HOLD)
    await wait_event(fake_gpu.web.started[held["executions"][0]["id"]])
    await api.until(held["id"], "running")
    finished = await api.submit({"backend": "gpu", "input": {}})
    await expect(portal.job(finished["id"])).to_have_attribute("data-status", "completed")
    assert await shown() == [finished["id"], done["id"], on_demo["id"]]

    await page.get_by_label("Status").select_option("")
    await page.get_by_label("Runs on").select_option("demo")
    await expect(rows).to_have_count(1)
    assert await shown() == [on_demo["id"]]

    await page.get_by_label("Runs on").select_option("")
    await page.get_by_label("Search").fill("project=apollo")
    await expect(rows).to_have_count(2)
    assert await shown() == [done["id"], running["id"]]
    assert "meta.project=apollo" in requested[-1]

    await page.get_by_label("Search").fill(on_demo["id"])  # a whole id is asked of the service
    await expect(rows).to_have_count(1)
    assert await shown() == [on_demo["id"]]
    assert f"ids={on_demo['id']}" in requested[-1]

    await page.get_by_label("Search").fill("project=nobody")
    await expect(page.locator("#jobs-empty")).to_have_text("No job matches the filter.")
    await expect(rows).to_have_count(0)
    assert portal.problems == []


async def test_cancel_the_selected_jobs_with_a_reason(portal: Portal, fake_gpu: FakeProviders) -> None:
    page = await portal.sign_in()
    api = await portal.api()
    jobs = [await api.submit(HOLD) for _ in range(3)]
    executions = [await _running(portal, job, fake_gpu) for job in jobs]
    chosen, kept = jobs[:2], jobs[2]
    selected = page.get_by_role("button", name=re.compile(r"^Cancel \d+ selected$"))
    await expect(selected).to_be_hidden()
    for job in chosen:
        await page.get_by_role("checkbox", name=f"Select job {job['id'][:8]}").check()
    await expect(selected).to_have_text("Cancel 2 selected")
    await selected.click()
    dialog = page.get_by_role("dialog")
    await expect(dialog.get_by_role("heading")).to_have_text("Cancel 2 selected jobs?")
    ids = dialog.get_by_role("list", name="Jobs").get_by_role("listitem")
    await expect(ids).to_have_text([j["id"][:8] for j in chosen])  # the count, and the ids
    assert not any(fake_gpu.web.closed[e].is_set() for e in executions)  # nothing before the confirmation
    await dialog.get_by_label("Reason (optional)").fill("wrong batch")
    await dialog.get_by_role("button", name="Cancel selected jobs").click()
    for job in chosen:
        await expect(portal.job(job["id"])).to_have_attribute("data-status", "cancelled")
        assert (await api.job(job["id"]))["cancel_reason"] == "wrong batch"
    await expect(page.get_by_role("status")).to_contain_text("2 job(s) cancelled")
    await expect(selected).to_be_hidden()
    await expect(portal.job(kept["id"])).to_have_attribute("data-status", "running")
    assert not fake_gpu.web.closed[executions[2]].is_set()

    # "Select all shown" ticks the active jobs the list shows: here the one left.
    await page.get_by_role("button", name="Select all shown").click()
    await expect(page.get_by_role("checkbox", name=f"Select job {kept['id'][:8]}")).to_be_checked()
    await expect(selected).to_have_text("Cancel 1 selected")


async def test_cancel_all_matching_shows_the_dry_runs_count_first(
    portal: Portal, fake_gpu: FakeProviders
) -> None:
    page = await portal.sign_in()
    api = await portal.api()
    batch = [await api.submit(HOLD, metadata={"batch": "a"}) for _ in range(3)]
    other = await api.submit(HOLD, metadata={"batch": "b"})
    done = await api.submit({"backend": "gpu", "input": {}}, metadata={"batch": "a"})
    for job in [*batch, other]:
        await _running(portal, job, fake_gpu)
    await api.until(done["id"], "completed")
    await expect(page.get_by_role("button", name="Cancel all matching")).to_be_hidden()  # no filter
    await page.get_by_label("Search").fill("batch=a")
    await expect(page.locator("[data-job-id]")).to_have_count(4)
    sent: list[Any] = []
    page.on("request", lambda r: r.url.endswith("/jobs/cancel") and sent.append(r.post_data_json))
    await page.get_by_role("button", name="Cancel all matching").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog.get_by_role("heading")).to_have_text("Cancel 3 matching jobs?")  # the active ones
    await expect(dialog).to_contain_text("batch=a")
    await expect(dialog.get_by_role("list", name="Jobs").get_by_role("listitem")).to_have_count(3)
    assert sent == [{"metadata": {"batch": "a"}, "dry_run": True}]
    assert not any(fake_gpu.web.closed[job["executions"][0]["id"]].is_set() for job in batch)
    await dialog.get_by_label("Reason (optional)").fill("batch a is wrong")
    await dialog.get_by_role("button", name="Cancel matching jobs").click()
    for job in batch:
        await expect(portal.job(job["id"])).to_have_attribute("data-status", "cancelled")
        assert (await api.job(job["id"]))["cancel_reason"] == "batch a is wrong"
    assert sent[1] == {"metadata": {"batch": "a"}, "reason": "batch a is wrong"}
    await expect(page.get_by_role("status")).to_contain_text("3 job(s) cancelled")
    assert (await api.job(other["id"]))["status"] == "running"
    assert (await api.job(done["id"]))["status"] == "completed"


async def test_the_new_controls_work_from_the_keyboard(portal: Portal, fake_gpu: FakeProviders) -> None:
    page = await portal.sign_in()
    api = await portal.api()
    job = await api.submit(HOLD)
    await _running(portal, job, fake_gpu)
    search = page.get_by_label("Search")
    await _focus_by_tab(page, search)
    await page.keyboard.type(job["id"][:5])
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("button", name="Clear filter")).to_be_visible()
    box = page.get_by_role("checkbox", name=f"Select job {job['id'][:8]}")
    await _focus_by_tab(page, box)
    await page.keyboard.press("Space")
    await expect(box).to_be_checked()
    selected = page.get_by_role("button", name="Cancel 1 selected")
    await _focus_by_tab(page, selected)
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    await expect(dialog.get_by_role("heading")).to_have_text("Cancel 1 selected job?")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(selected).to_be_focused()
    await _focus_by_tab(page, page.get_by_role("button", name="Cancel all matching"))
    await page.keyboard.press("Enter")
    await expect(dialog.get_by_role("heading")).to_have_text("Cancel 1 matching job?")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")  # "Cancel matching jobs"
    await expect(portal.job(job["id"])).to_have_attribute("data-status", "cancelled")
    await _focus_by_tab(page, page.get_by_label("Times"))
    await page.keyboard.press("ArrowDown")  # a closed select changes with the arrows
    await expect(page.get_by_label("Times")).to_have_value("absolute")


async def test_the_new_controls_fit_a_phone(
    cluster: Cluster, browser: Browser, http: aiohttp.ClientSession, fake_gpu: FakeProviders
) -> None:
    portal = await open_portal(cluster, browser, http, [Wallet()], width=375, height=740)
    try:
        page = await portal.sign_in()
        api = await portal.api()
        job = await api.submit(HOLD, metadata={"a-rather-long-metadata-key": "and-a-long-value-" * 3})
        await _running(portal, job, fake_gpu)
        await page.get_by_label("Search").fill("a-rather-long-metadata-key=" + "and-a-long-value-" * 3)
        await page.get_by_role("checkbox", name=f"Select job {job['id'][:8]}").check()
        await expect(page.get_by_role("button", name="Cancel 1 selected")).to_be_visible()
        widths = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1] == 375, widths
        for name in ("Cancel 1 selected", "Cancel all matching", "Clear filter"):
            left, right = await page.get_by_role("button", name=name).evaluate(
                "b => { b.scrollIntoView(); const r = b.getBoundingClientRect(); return [r.left, r.right]; }"
            )
            assert 0 <= left < right <= 375, (name, left, right)
        await page.get_by_role("button", name="Cancel all matching").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog.get_by_role("heading")).to_have_text("Cancel 1 matching job?")
        box = await dialog.evaluate("d => { const r = d.getBoundingClientRect(); return [r.left, r.right]; }")
        assert 0 <= box[0] < box[1] <= 375, box
        widths = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= 375, widths
    finally:
        await portal.context.close()


async def test_the_wallet_chooser_keeps_the_keyboard_inside_too(
    cluster: Cluster, browser: Browser, http: aiohttp.ClientSession
) -> None:
    portal = await open_portal(cluster, browser, http, [Wallet(), Wallet()])
    try:
        page = await portal.open()
        await page.get_by_role("button", name="Sign in with Ethereum").click()
        dialog = page.get_by_role("dialog")
        first = dialog.get_by_role("button", name="Test Wallet 1")
        await expect(first).to_be_focused()
        await page.keyboard.press("Shift+Tab")
        await expect(dialog.get_by_role("button", name="Close")).to_be_focused()
        await page.keyboard.press("Tab")
        await expect(first).to_be_focused()
        await page.keyboard.press("Escape")
        await expect(dialog).to_be_hidden()
        await expect(page.get_by_role("button", name="Sign in with Ethereum")).to_be_visible()
    finally:
        await portal.context.close()
