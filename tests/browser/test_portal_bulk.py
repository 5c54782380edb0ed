"""The portal's tools for many jobs, in Chromium against a real service: the filter, the
selection and its cancel, cancel-all-matching with its dry-run count, a reason in every
cancel dialog, the time display, and the remote cancel's state in words."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import Page, expect

from runner.fakes import FakeProviders
from tests.browser.conftest import Portal
from tests.browser.test_portal import HOLD, _running
from tests.client import wait_event

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
    page = await portal.sign_in()
    rows = page.locator("[data-job-id]")
    await expect(rows).to_have_count(3)
    target = jobs[1]["id"]
    await page.get_by_label("Search").fill(target[:6])
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-job-id", target)
    later = await api.submit({"backend": "gpu", "input": {"later": True}})
    await api.until(later["id"], "completed")
    # A job the stream brings that does not match is not shown; the target's row still is.
    await expect(rows).to_have_count(1)
    assert not await portal.job(later["id"]).count()

    await page.get_by_label("Search").fill("not-an-id!")
    await expect(page.get_by_role("alert")).to_contain_text("neither an id")
    await page.get_by_role("button", name="Clear filter").click()
    await expect(rows).to_have_count(4)
    await expect(page.get_by_role("button", name="Clear filter")).to_be_hidden()
