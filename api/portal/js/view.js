// Building the page's elements. Text from the service goes through textContent only.
import { explainRemoteCancel, mayRunOn, secondsAfterCancel } from "./remote.js";
import { timeElement } from "./times.js";

export const ACTIVE = new Set(["queued", "running"]);
const RERUNNABLE = new Set(["cancelled", "failed"]);

/** el("button", {type: "button", dataset: {key: "x"}}, "text", child...) */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function formatSeconds(total) {
  const seconds = Math.max(0, Math.round(total));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function formatGpu(seconds) {
  if (seconds === null || seconds === undefined) return null;
  return `${Number(seconds).toFixed(seconds < 10 ? 2 : 1)} GPU-s`;
}

function elapsed(execution, now) {
  if (!execution.started_at) return "not started";
  const end = execution.finished_at ? Date.parse(execution.finished_at) : now;
  return formatSeconds((end - Date.parse(execution.started_at)) / 1000);
}

function when(iso) {
  return timeElement(iso);
}

function pretty(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

/** Output or error, filled in only when opened: outputs can be large. */
function onDemand(label, value, key, open) {
  const body = el("pre", { className: "payload" });
  const details = el("details", { dataset: { key }, open }, el("summary", {}, label), body);
  const fill = () => {
    if (details.open && !body.textContent) body.textContent = pretty(value);
  };
  details.addEventListener("toggle", fill);
  fill();
  return details;
}

/** The remote cancel's state, what it proves, and the GPU time that ran on after the cancel. */
function remoteCancel(execution) {
  const words = explainRemoteCancel(execution);
  const after = secondsAfterCancel(execution);
  const spend = after !== null
    ? el("span", {
      className: "after-cancel",
      title: "From the cancel (the execution's finished_at) to the work seen over (its remote_stopped_at)",
    }, `${formatGpu(after)} after the cancel`)
    : mayRunOn(execution) ? el("span", { className: "after-cancel" }, "not yet seen stopped") : null;
  if (!execution.remote_cancel && !spend) return null;
  return el("div", { className: "remote-box" },
    execution.remote_cancel
      ? el("span", { className: `remote remote-${execution.remote_cancel}` }, `remote cancel: ${execution.remote_cancel}`)
      : null,
    spend,
    words ? el("p", { className: "remote-note" }, words) : null);
}

function executionRow(job, execution, ui, now) {
  const spend = formatGpu(execution.gpu_seconds);
  const row = el(
    "li",
    { className: "execution", dataset: { executionId: execution.id, status: execution.status } },
    el("span", { className: "backend" }, execution.name ? `${execution.name} · ${execution.backend}` : execution.backend),
    el("span", { className: `status status-${execution.status}` }, execution.status),
    el("span", { className: "elapsed", dataset: { started: execution.started_at || "", finished: execution.finished_at || "" } },
      elapsed(execution, now)),
    spend ? el("span", { className: "spend" }, spend) : null,
    remoteCancel(execution),
  );
  // Alone, an execution is cancelled with its job: the button is for one among several.
  const activeCount = job.executions.filter((e) => ACTIVE.has(e.status)).length;
  if (ACTIVE.has(execution.status) && ACTIVE.has(job.status) && activeCount > 1) {
    const busy = ui.cancellingExecutions.has(execution.id);
    row.append(el("button", {
      type: "button", className: "small", dataset: { action: "cancel-execution", executionId: execution.id, key: `ce-${execution.id}` },
      disabled: busy,
    }, busy ? "Cancelling…" : "Cancel execution"));
  }
  const extras = el("div", { className: "extras" });
  if (execution.output !== null && execution.output !== undefined) {
    extras.append(onDemand("Output", execution.output, `out-${execution.id}`, ui.open.has(`out-${execution.id}`)));
  }
  if (execution.error) {
    extras.append(onDemand("Error", execution.error, `err-${execution.id}`, ui.open.has(`err-${execution.id}`)));
  }
  if (extras.childElementCount) row.append(extras);
  return row;
}

function auditList(events) {
  if (!events) return el("p", { className: "muted" }, "Loading the audit trail…");
  if (events.length === 0) return el("p", { className: "muted" }, "No events.");
  return el("ol", { className: "audit" }, ...events.map((event) => el(
    "li", {},
    when(event.at), " ",
    describeEvent(event),
    // The raw record on demand only: words first, JSON for whoever needs every field.
    event.detail && Object.keys(event.detail).length
      ? el("details", { className: "raw" }, el("summary", {}, "Details"),
        el("pre", {}, JSON.stringify(event.detail, null, 2)))
      : null,
  )));
}

/** 0xA9Cf…180c for a wallet, "the service" for the system, an instance id as it is. */
function who(actor) {
  if (!actor || actor === "system") return "the service";
  if (/^0x[0-9a-fA-F]{40}$/.test(actor)) return `${actor.slice(0, 6)}…${actor.slice(-4)}`;
  return actor;
}

/** One audit event in words: "cancelled by 0xA9Cf…180c: changed my mind". */
export function describeEvent({ kind, actor, detail = {} }) {
  const d = detail || {};
  const reason = typeof d.reason === "string" && d.reason ? `: ${d.reason}` : "";
  const n = (count, noun) => `${count} ${noun}${count === 1 ? "" : "s"}`;
  switch (kind) {
    case "submitted":
      return `submitted by ${who(actor)}${d.executions ? ` (${n(d.executions, "execution")})` : ""}`;
    case "started":
      return `started on ${d.worker || "an instance"}${d.attempt > 1 ? ` (attempt ${d.attempt})` : ""}`;
    case "cancelled":
      return `cancelled by ${who(actor)}${reason}`;
    case "execution_cancelled":
      return `an execution cancelled by ${who(actor)}${reason}`;
    case "task_stopped":
      return `its task stopped${typeof d.latency_ms === "number" ? ` ${Math.round(d.latency_ms)} ms after the cancel` : ""}`;
    case "remote_cancel":
      return `the provider was asked to stop it (${d.outcome || "sent"})`;
    case "remote_stop_confirmed":
      return `the provider confirmed the work stopped${typeof d.after_cancel_s === "number" ? `, ${d.after_cancel_s} s after the cancel` : ""}`;
    case "requeued":
      return `put back in the queue${reason}`;
    case "waiting":
      return `waiting${reason}`;
    case "completed":
    case "failed":
      return `${kind}${d.error ? `: ${d.error}` : ""}`;
    default:
      if (kind.startsWith("execution_")) return `an execution ${kind.slice(10)}${d.error ? `: ${d.error}` : ""}`;
      return `${kind.replaceAll("_", " ")}${actor && actor !== "system" ? ` by ${who(actor)}` : ""}${reason}`;
  }
}

/**
 * The inside of one job's element. `ui` carries what the page remembers about it across
 * re-renders: a cancel in flight, opened outputs, the audit trail when shown.
 */
export function renderJob(node, job, ui, now = Date.now()) {
  node.dataset.jobId = job.id;
  node.dataset.status = job.status;
  const actions = el("div", { className: "actions" });
  if (ACTIVE.has(job.status)) {
    const busy = ui.cancelling;
    actions.append(el("button", {
      type: "button", className: "danger", dataset: { action: "cancel", key: "cancel" }, disabled: busy,
    }, busy ? "Cancelling…" : "Cancel"));
  }
  if (RERUNNABLE.has(job.status)) {
    actions.append(el("button", { type: "button", dataset: { action: "rerun", key: "rerun" }, disabled: ui.rerunning },
      ui.rerunning ? "Starting…" : "Re-run"));
  }
  actions.append(el("button", {
    type: "button", dataset: { action: "audit", key: "audit" }, "aria-expanded": ui.audit !== null ? "true" : "false",
  }, "Audit trail"));

  const spend = formatGpu(job.gpu_seconds);
  const short = job.id.slice(0, 8);
  // Only an active job can be selected: a cancel leaves the others as they are.
  const select = ACTIVE.has(job.status)
    ? el("input", {
      type: "checkbox", className: "select", "aria-label": `Select job ${short}`,
      dataset: { action: "select", key: "select" }, checked: ui.selected,
    })
    : null;
  const head = el("div", { className: "job-head" },
    select,
    el("code", { className: "job-id", title: job.id }, job.id.slice(0, 8)),
    el("span", { className: `status status-${job.status}` }, job.status),
    el("span", { className: "muted" }, when(job.created_at)),
    spend ? el("span", { className: "spend" }, spend) : null,
    job.rerun_of ? el("span", { className: "muted" }, `re-run of ${job.rerun_of.slice(0, 8)}`) : null,
    actions);
  const details = [];
  if (job.cancelled_at) {
    details.push(el("p", { className: "muted cancelled-line" }, "Cancelled ", when(job.cancelled_at),
      job.cancel_reason ? el("span", { className: "cancel-reason" }, ` (${job.cancel_reason})`) : null));
  }
  if (job.error) details.push(el("p", { className: "error" }, job.error));
  const executions = el("ul", { className: "executions", "aria-label": "Executions" },
    ...job.executions.map((execution) => executionRow(job, execution, ui, now)));
  const audit = ui.audit !== null ? el("div", { className: "audit-box" }, auditList(ui.audit)) : null;
  node.replaceChildren(...[head, ...details, executions, audit].filter(Boolean));
}

/** Advance the elapsed time of running executions without re-rendering anything. */
export function tick(root, now = Date.now()) {
  for (const span of root.querySelectorAll(".elapsed")) {
    const { started, finished } = span.dataset;
    if (started && !finished) span.textContent = formatSeconds((now - Date.parse(started)) / 1000);
  }
}
