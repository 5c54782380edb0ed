// Acting on many jobs: the rows' checkboxes with "Cancel N selected", and "Cancel all
// matching", which asks the service for the count first (a dry run) and shows it.
import { api, describe } from "./api.js";
import { confirmAction, toast } from "./dialogs.js";
import { describeFilter, isFiltered, matches, toBody } from "./filter.js";
import { ACTIVE } from "./view.js";

const $ = (id) => document.getElementById(id);
export const selected = new Set(); // ids of the jobs whose box is ticked
let page = null; // {entries(), filter(), ensureToken(), render(entry)}

export function setupBulk(given) {
  page = given;
  $("cancel-selected").addEventListener("click", cancelSelected);
  $("cancel-matching").addEventListener("click", cancelMatching);
  $("select-shown").addEventListener("click", selectShown);
  $("jobs").addEventListener("change", (event) => {
    const box = event.target.closest("input[data-action=select]");
    const node = box && box.closest("[data-job-id]");
    if (!node) return;
    if (box.checked) selected.add(node.dataset.jobId);
    else selected.delete(node.dataset.jobId);
    showButtons();
  });
}

/** A job that is no longer active, or no longer shown, cannot stay selected. */
export function forget(id) {
  if (selected.delete(id)) showButtons();
}

export function clearSelection() {
  selected.clear();
  showButtons();
}

export function showButtons() {
  const button = $("cancel-selected");
  button.hidden = selected.size === 0;
  button.textContent = `Cancel ${selected.size} selected`;
  const filtered = isFiltered(page.filter());
  $("cancel-matching").hidden = !filtered;
  $("clear-filter").hidden = !filtered;
}

/** Ticks every queued or running job shown (those the filter let in). */
function selectShown() {
  const active = page.entries().filter((entry) => ACTIVE.has(entry.job.status));
  if (active.length === 0) {
    toast("No queued or running job is shown.");
    return;
  }
  for (const entry of active) {
    selected.add(entry.job.id);
    page.render(entry);
  }
  showButtons();
}

/** Marks rows "Cancelling…" while their cancel is on its way, and back when it failed. */
function mark(ids, busy) {
  for (const entry of page.entries()) {
    if (!ids.includes(entry.job.id) || !ACTIVE.has(entry.job.status)) continue;
    entry.ui.cancelling = busy;
    page.render(entry);
  }
}

async function cancelSelected() {
  const ids = [...selected];
  if (ids.length === 0) return;
  const answer = await confirmAction({
    title: `Cancel ${ids.length} selected job${ids.length === 1 ? "" : "s"}?`,
    body: ids.length === 1
      ? "This job stops at once: its running calls are closed and each backend is told to stop."
      : `${ids.length} jobs stop at once: their running calls are closed and each backend is told to stop.`,
    confirm: "Cancel selected jobs",
    ids,
  });
  if (!answer || !(await page.ensureToken())) {
    $("cancel-selected").focus();
    return;
  }
  await send({ ids }, answer.reason, ids, $("cancel-selected"));
  clearSelection();
}

async function send(body, reason, ids, button) {
  button.disabled = true;
  mark(ids, true);
  try {
    const outcome = await api.cancelMatching(body, reason);
    toast(outcome.count === 0 ? "No job was active any more." : `${outcome.count} job(s) cancelled.`);
    // Rows change as the stream brings them; one the stream has not touched is not left busy.
    mark(ids.filter((id) => !outcome.cancelled || !outcome.cancelled.includes(id)), false);
  } catch (error) {
    toast(describe(error), "error");
    mark(ids, false);
  } finally {
    button.disabled = false;
  }
}

async function cancelMatching() {
  const filter = page.filter();
  const body = toBody(filter);
  if (body === null) {
    toast("No active job matches the filter: only queued and running jobs can be cancelled.");
    return;
  }
  if (filter.prefixes.length) {
    // The API has no id-prefix search: the active jobs loaded here that match are named.
    const ids = page.entries().filter((e) => ACTIVE.has(e.job.status) && matches(e.job, filter)).map((e) => e.job.id);
    if (ids.length === 0) {
      toast("No active job shown here matches the filter.");
      return;
    }
    body.ids = ids;
  }
  const button = $("cancel-matching");
  button.disabled = true;
  let dry;
  try {
    dry = await api.countMatching(body);
  } catch (error) {
    toast(describe(error), "error");
    return;
  } finally {
    button.disabled = false;
  }
  if (dry.count === 0) {
    toast("No active job matches the filter.");
    return;
  }
  const plural = dry.count === 1 ? "" : "s";
  const answer = await confirmAction({
    title: `Cancel ${dry.count} matching job${plural}?`,
    body: `${dry.count} queued or running job${plural} match (${describeFilter(filter) || "the ids shown"}) `
      + "and stop at once; a job that starts to match meanwhile is cancelled too.",
    confirm: "Cancel matching jobs",
    ids: dry.ids,
    total: dry.count,
  });
  if (!answer || !(await page.ensureToken())) {
    button.focus();
    return;
  }
  await send(body, answer.reason, dry.ids, button);
}
