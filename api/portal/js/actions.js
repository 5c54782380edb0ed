// What a person does to one job from its row (cancel it or one execution, re-run it, read
// its audit trail), and "Cancel all". Each cancel asks first, with an optional reason.
import { api, describe } from "./api.js";
import { confirmAction, toast } from "./dialogs.js";
import { ACTIVE } from "./view.js";

const $ = (id) => document.getElementById(id);
let page = null; // {entry(id), entries(), upsert(job, source), render(entry), ensureToken()}

export function setupActions(given) {
  page = given;
  $("jobs").addEventListener("click", onJobsClick);
  $("cancel-all").addEventListener("click", cancelAll);
}

export async function refreshAudit(entry) {
  try {
    const { events } = await api.audit(entry.job.id);
    if (entry.ui.audit === null) return; // closed meanwhile
    entry.ui.audit = events;
  } catch (error) {
    entry.ui.audit = null;
    toast(describe(error), "error");
  }
  page.render(entry);
}

async function cancelJob(entry) {
  const short = entry.job.id.slice(0, 8);
  entry.ui.cancelling = true;
  page.render(entry);
  const answer = await confirmAction({
    title: "Cancel this job?",
    body: `Job ${short} stops at once: its running calls are closed and each backend is told to stop.`,
    confirm: "Cancel job",
  });
  if (!answer || !(await page.ensureToken())) {
    entry.ui.cancelling = false;
    page.render(entry);
    entry.node.querySelector('[data-key="cancel"]')?.focus();
    return;
  }
  try {
    const outcome = await api.cancel(entry.job.id, answer.reason);
    const stopped = outcome.stopped === false ? " (still stopping)" : "";
    toast(outcome.previous_status === "cancelled"
      ? `Job ${short} was already cancelled.`
      : `Job ${short} cancelled: ${outcome.executions_cancelled} execution(s) stopped${stopped}.`);
    page.upsert(await api.job(entry.job.id), "reply");
  } catch (error) {
    toast(describe(error), "error");
    entry.ui.cancelling = false;
    page.render(entry);
  }
}

async function cancelExecution(entry, executionId) {
  const execution = entry.job.executions.find((e) => e.id === executionId);
  const answer = await confirmAction({
    title: "Cancel this execution?",
    body: `The ${execution ? execution.backend : ""} execution stops; the job's other executions go on.`,
    confirm: "Cancel execution",
  });
  if (!answer || !(await page.ensureToken())) return;
  entry.ui.cancellingExecutions.add(executionId);
  page.render(entry);
  try {
    await api.cancelExecution(entry.job.id, executionId, answer.reason);
    toast(`Execution of job ${entry.job.id.slice(0, 8)} cancelled.`);
    page.upsert(await api.job(entry.job.id), "reply");
  } catch (error) {
    toast(describe(error), "error");
  } finally {
    entry.ui.cancellingExecutions.delete(executionId);
    page.render(entry);
  }
}

async function rerun(entry) {
  if (!(await page.ensureToken())) return;
  entry.ui.rerunning = true;
  page.render(entry);
  try {
    const job = await api.rerun(entry.job.id);
    page.upsert(job, "reply");
    toast(`Job ${entry.job.id.slice(0, 8)} re-run as ${job.id.slice(0, 8)}.`);
  } catch (error) {
    toast(describe(error), "error");
  } finally {
    entry.ui.rerunning = false;
    page.render(entry);
  }
}

async function cancelAll() {
  const active = page.entries().filter((entry) => ACTIVE.has(entry.job.status)).length;
  const answer = await confirmAction({
    title: "Cancel all your jobs?",
    body: `Every queued or running job of this wallet stops, whatever the filter${active ? ` (${active} shown here)` : ""}.`,
    confirm: "Cancel all jobs",
  });
  if (!answer || !(await page.ensureToken())) return;
  const button = $("cancel-all");
  button.disabled = true;
  try {
    const outcome = await api.cancelMatching({}, answer.reason);
    toast(outcome.count === 0 ? "No job was active." : `${outcome.count} job(s) cancelled.`);
  } catch (error) {
    toast(describe(error), "error");
  } finally {
    button.disabled = false;
  }
}

function toggleAudit(entry) {
  if (entry.ui.audit !== null) {
    entry.ui.audit = null;
    page.render(entry);
    return;
  }
  entry.ui.audit = undefined; // loading
  page.render(entry);
  refreshAudit(entry);
}

function onJobsClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button || button.disabled) return;
  const node = button.closest("[data-job-id]");
  const entry = node && page.entry(node.dataset.jobId);
  if (!entry) return;
  const action = button.dataset.action;
  if (action === "cancel") cancelJob(entry);
  else if (action === "cancel-execution") cancelExecution(entry, button.dataset.executionId);
  else if (action === "rerun") rerun(entry);
  else if (action === "audit") toggleAudit(entry);
}
