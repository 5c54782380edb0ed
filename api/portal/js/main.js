// The portal: sign in with a wallet, then the caller's jobs, live on one GET /events stream.
import { api, ApiError, hasToken, setToken } from "./api.js";
import { chooseWallet, confirmAction, toast } from "./dialogs.js";
import { ACTIVE, el, formatGpu, renderJob, tick } from "./view.js";
import { discoverWallets, shortAddress, signIn } from "./wallet.js";

const $ = (id) => document.getElementById(id);

const state = {
  address: null,
  jobs: new Map(), // id -> {job, node, ui}
  cursor: null,
  stream: null,
  backends: [],
};

// ---- messages -------------------------------------------------------------------------------

function describe(error) {
  if (error instanceof ApiError) return error.message;
  if (error && error.code === 4001) return "The request was declined in the wallet.";
  if (error && typeof error.message === "string" && error.message) return error.message;
  return "Something went wrong.";
}

// ---- signing in and out ---------------------------------------------------------------------

async function signInFlow() {
  const button = $("sign-in");
  button.disabled = true;
  try {
    const wallets = await discoverWallets();
    // A lasting note, not a toast: a first visitor needs time to read what to do instead.
    $("no-wallet").hidden = wallets.length > 0;
    if (wallets.length === 0) return false;
    const wallet = await chooseWallet(wallets);
    if (!wallet) return false;
    const session = await signIn(wallet.provider);
    setToken(session.token);
    await showSignedIn(session.address);
    return true;
  } catch (error) {
    toast(describe(error), "error");
    return false;
  } finally {
    button.disabled = false;
  }
}

/** After a reload the cookie still reads, but acting needs the token: sign again first. */
async function ensureToken() {
  if (hasToken()) return true;
  toast("Sign the message in your wallet to act on your jobs.");
  return signInFlow();
}

async function signOut() {
  try {
    await api.logout();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      toast(describe(error), "error");
      return;
    }
  }
  setToken(null);
  showSignedOut();
  toast("Signed out.");
}

async function showSignedIn(address) {
  const firstTime = state.address !== address;
  state.address = address;
  $("address").textContent = shortAddress(address);
  $("address").title = address;
  $("address").hidden = false;
  $("sign-out").hidden = false;
  $("sign-in").hidden = true;
  $("welcome").hidden = true;
  $("app").hidden = false;
  if (firstTime || !state.stream) {
    await Promise.all([loadBackends(), startStream(), loadSpend()]);
  }
}

function showSignedOut() {
  if (state.stream) state.stream.close();
  state.stream = null;
  state.address = null;
  state.jobs.clear();
  state.cursor = null;
  $("jobs").replaceChildren();
  $("address").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("welcome").hidden = false;
  $("app").hidden = true;
  $("sign-in").focus();
}

// ---- the jobs list --------------------------------------------------------------------------

function newUi() {
  return { cancelling: false, rerunning: false, cancellingExecutions: new Set(), open: new Set(), audit: null };
}

function render(entry) {
  // Re-rendering must not lose the keyboard's place: focus returns to the same control.
  const focused = entry.node.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  for (const details of entry.node.querySelectorAll("details")) {
    if (details.open) entry.ui.open.add(details.dataset.key);
    else entry.ui.open.delete(details.dataset.key);
  }
  renderJob(entry.node, entry.job, entry.ui);
  if (focused) {
    const again = entry.node.querySelector(`[data-key="${CSS.escape(focused)}"]`);
    (again && !again.disabled ? again : entry.node.querySelector("button:not([disabled])") || entry.node).focus();
  }
}

/**
 * Insert or update a job; the list stays newest first. `source` is "stream", "list" or
 * "reply". Once the stream has brought a job, only the stream updates it: a reply or a list
 * read may be older than the stream's latest, and the stream misses no change after `ready`.
 */
function upsert(job, source) {
  const known = state.jobs.get(job.id);
  if (known) {
    if (source !== "stream" && known.streamed) return;
    const wasActive = ACTIVE.has(known.job.status);
    known.job = job;
    known.streamed ||= source === "stream";
    if (wasActive && !ACTIVE.has(job.status)) {
      known.ui.cancelling = false;
      spendSoon();
    }
    if (known.ui.audit !== null) refreshAudit(known);
    render(known);
    return;
  }
  const list = $("jobs");
  const entries = [...state.jobs.values()];
  const oldest = entries.length ? entries[entries.length - 1].job.created_at : null;
  // A job older than everything shown arrives with "Load more", not from the stream.
  if (source === "stream" && state.cursor && oldest && job.created_at < oldest) return;
  const entry = { job, node: el("li", { className: "job", tabindex: "-1" }), ui: newUi(), streamed: source === "stream" };
  render(entry);
  const before = entries.find((other) => other.job.created_at < job.created_at);
  list.insertBefore(entry.node, before ? before.node : null);
  const ordered = [...state.jobs.entries(), [job.id, entry]]
    .sort((a, b) => (a[1].job.created_at < b[1].job.created_at ? 1 : -1));
  state.jobs = new Map(ordered);
  $("jobs-empty").hidden = true;
}

async function loadPage() {
  const button = $("load-more");
  button.disabled = true;
  try {
    const page = await api.jobs(state.cursor);
    for (const job of page.jobs) upsert(job, "list");
    state.cursor = page.next_cursor;
    button.hidden = !page.next_cursor;
    $("jobs-empty").hidden = state.jobs.size > 0;
  } catch (error) {
    toast(describe(error), "error");
  } finally {
    button.disabled = false;
  }
}

async function reloadList() {
  state.jobs.clear();
  state.cursor = null;
  $("jobs").replaceChildren();
  await loadPage();
}

/** One stream for every job of the wallet; the list is read once the stream is ready. */
function startStream() {
  if (state.stream) state.stream.close();
  return new Promise((resolve) => {
    const stream = new EventSource("/events");
    state.stream = stream;
    let loaded = false;
    stream.addEventListener("ready", async () => {
      if (!loaded) {
        loaded = true;
        await reloadList();
        resolve();
      }
    });
    stream.addEventListener("reset", () => reloadList());
    // The session was signed out (in another tab, on another device) or expired.
    stream.addEventListener("signed_out", () => {
      stream.close();
      if (state.stream !== stream) return;
      state.stream = null;
      setToken(null);
      showSignedOut();
      toast("Your session ended; sign in again.");
    });
    stream.addEventListener("message", (event) => {
      try {
        upsert(JSON.parse(event.data), "stream");
      } catch {
        // An event the page cannot read is skipped; the next change brings the whole job.
      }
    });
    stream.addEventListener("error", async () => {
      if (stream.readyState !== EventSource.CLOSED) return; // the browser reconnects by itself
      try {
        await api.me();
        setTimeout(() => state.stream === stream && startStream(), 2000);
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) {
          setToken(null);
          showSignedOut();
          toast("Your session ended; sign in again.");
        }
      }
      if (!loaded) {
        loaded = true;
        resolve();
      }
    });
  });
}

async function refreshAudit(entry) {
  try {
    const { events } = await api.audit(entry.job.id);
    if (entry.ui.audit === null) return; // closed meanwhile
    entry.ui.audit = events;
  } catch (error) {
    entry.ui.audit = null;
    toast(describe(error), "error");
  }
  render(entry);
}

// ---- actions --------------------------------------------------------------------------------

async function cancelJob(entry) {
  const short = entry.job.id.slice(0, 8);
  entry.ui.cancelling = true;
  render(entry);
  const confirmed = await confirmAction({
    title: "Cancel this job?",
    body: `Job ${short} stops at once: its running calls are closed and each backend is told to stop.`,
    confirm: "Cancel job",
  });
  if (!confirmed || !(await ensureToken())) {
    entry.ui.cancelling = false;
    render(entry);
    entry.node.querySelector('[data-key="cancel"]')?.focus();
    return;
  }
  try {
    const outcome = await api.cancel(entry.job.id);
    const stopped = outcome.stopped === false ? " (still stopping)" : "";
    toast(outcome.previous_status === "cancelled"
      ? `Job ${short} was already cancelled.`
      : `Job ${short} cancelled: ${outcome.executions_cancelled} execution(s) stopped${stopped}.`);
    upsert(await api.job(entry.job.id), "reply");
  } catch (error) {
    toast(describe(error), "error");
    entry.ui.cancelling = false;
    render(entry);
  }
}

async function cancelExecution(entry, executionId) {
  const execution = entry.job.executions.find((e) => e.id === executionId);
  const confirmed = await confirmAction({
    title: "Cancel this execution?",
    body: `The ${execution ? execution.backend : ""} execution stops; the job's other executions go on.`,
    confirm: "Cancel execution",
  });
  if (!confirmed || !(await ensureToken())) return;
  entry.ui.cancellingExecutions.add(executionId);
  render(entry);
  try {
    await api.cancelExecution(entry.job.id, executionId);
    toast(`Execution of job ${entry.job.id.slice(0, 8)} cancelled.`);
    upsert(await api.job(entry.job.id), "reply");
  } catch (error) {
    toast(describe(error), "error");
  } finally {
    entry.ui.cancellingExecutions.delete(executionId);
    render(entry);
  }
}

async function rerun(entry) {
  if (!(await ensureToken())) return;
  entry.ui.rerunning = true;
  render(entry);
  try {
    const job = await api.rerun(entry.job.id);
    upsert(job, "reply");
    toast(`Job ${entry.job.id.slice(0, 8)} re-run as ${job.id.slice(0, 8)}.`);
  } catch (error) {
    toast(describe(error), "error");
  } finally {
    entry.ui.rerunning = false;
    render(entry);
  }
}

async function cancelAll() {
  const active = [...state.jobs.values()].filter((entry) => ACTIVE.has(entry.job.status)).length;
  const confirmed = await confirmAction({
    title: "Cancel all your jobs?",
    body: `Every queued or running job of this wallet stops${active ? ` (${active} shown here)` : ""}.`,
    confirm: "Cancel all jobs",
  });
  if (!confirmed || !(await ensureToken())) return;
  const button = $("cancel-all");
  button.disabled = true;
  try {
    const outcome = await api.cancelAll();
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
    render(entry);
    return;
  }
  entry.ui.audit = undefined; // loading
  render(entry);
  refreshAudit(entry);
}

function onJobsClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button || button.disabled) return;
  const node = button.closest("[data-job-id]");
  const entry = node && state.jobs.get(node.dataset.jobId);
  if (!entry) return;
  const action = button.dataset.action;
  if (action === "cancel") cancelJob(entry);
  else if (action === "cancel-execution") cancelExecution(entry, button.dataset.executionId);
  else if (action === "rerun") rerun(entry);
  else if (action === "audit") toggleAudit(entry);
}

// ---- spend ----------------------------------------------------------------------------------

let spendTimer = null;

/** GET /usage, shown as totals and per backend; again shortly after any job finishes. */
async function loadSpend() {
  spendTimer = null;
  let usage;
  try {
    usage = await api.usage();
  } catch (error) {
    toast(describe(error), "error");
    return;
  }
  $("spend-totals").replaceChildren(
    el("dt", {}, "Jobs"), el("dd", {}, String(usage.jobs)),
    el("dt", {}, "Executions"), el("dd", {}, String(usage.executions)),
    el("dt", {}, "GPU time"), el("dd", { className: "spend-total" }, formatGpu(usage.gpu_seconds) || "0 GPU-s"));
  $("spend-backends").replaceChildren(...Object.entries(usage.backends).map(([name, b]) => el("li", {},
    el("strong", {}, name), ` ${formatGpu(b.gpu_seconds) || "0 GPU-s"} over ${b.executions} execution(s)`,
    b.cancelled ? `, ${b.cancelled} cancelled (${formatGpu(b.gpu_seconds_after_cancel) || "0 GPU-s"} after the cancel)` : "")));
}

function spendSoon() {
  if (spendTimer === null) spendTimer = setTimeout(loadSpend, 1000);
}

// ---- the submit form ------------------------------------------------------------------------

async function loadBackends() {
  try {
    state.backends = (await api.backends()).backends;
  } catch (error) {
    state.backends = [];
    toast(describe(error), "error");
  }
  for (const select of document.querySelectorAll("select[name=backend]")) fillBackends(select);
  if (!document.querySelector(".execution-fields")) addExecutionFields();
}

function fillBackends(select) {
  const chosen = select.value;
  select.replaceChildren(...state.backends.map((backend) => el("option", { value: backend.name }, backend.name)));
  if (chosen) select.value = chosen;
  select.dispatchEvent(new Event("change")); // its input's example follows the backend
}

// What each kind of backend takes, as the input box's placeholder.
const INPUT_EXAMPLES = {
  demo: '{"seconds": 5}',
  http: '{"prompt": "a red fox in the snow"}',
  runpod: '{"prompt": "a red fox in the snow"}',
  replicate: '{"prompt": "a red fox in the snow"}',
  fal: '{"prompt": "a red fox in the snow", "num_images": 1}',
  subprocess: '{"any": "JSON, given to the command on its stdin"}',
};

function inputExample(name) {
  const backend = state.backends.find((b) => b.name === name);
  return (backend && INPUT_EXAMPLES[backend.kind]) || "{}";
}

let fieldCount = 0;

function addExecutionFields() {
  fieldCount += 1;
  const n = fieldCount;
  const select = el("select", { name: "backend", id: `backend-${n}` });
  fillBackends(select);
  const remove = el("button", { type: "button", className: "small" }, "Remove execution");
  const fields = el("fieldset", { className: "execution-fields" },
    el("legend", {}, "Execution"),
    el("label", { for: `backend-${n}` }, "Backend"), select,
    el("label", { for: `input-${n}` }, "Input (JSON)"),
    el("textarea", { id: `input-${n}`, name: "input", rows: 3, spellcheck: "false" }),
    remove);
  const textarea = fields.querySelector("textarea");
  const hint = () => { textarea.placeholder = inputExample(select.value); };
  select.addEventListener("change", hint);
  hint();
  remove.addEventListener("click", () => {
    if (document.querySelectorAll(".execution-fields").length > 1) fields.remove();
  });
  $("executions-fields").append(fields);
  return fields;
}

function formError(text, focus) {
  $("form-error").textContent = text;
  if (focus) focus.focus();
}

async function submitJob(event) {
  event.preventDefault();
  formError("");
  const executions = [];
  for (const fields of document.querySelectorAll(".execution-fields")) {
    const textarea = fields.querySelector("textarea");
    const backend = fields.querySelector("select").value;
    if (!backend) return formError("Choose a backend.", fields.querySelector("select"));
    let input;
    try {
      input = JSON.parse(textarea.value.trim() || "{}");
    } catch (error) {
      return formError(`The input is not valid JSON: ${error.message}`, textarea);
    }
    executions.push({ backend, input });
  }
  const body = { executions };
  const timeout = $("timeout").value.trim();
  if (timeout) {
    if (!/^\d+$/.test(timeout)) return formError("The timeout is a whole number of seconds.", $("timeout"));
    body.timeout_s = Number(timeout);
  }
  // Only its form is checked here: the service resolves the host and says what it refuses.
  const webhook = $("webhook").value.trim();
  if (webhook) {
    if (!/^https?:\/\/\S+$/i.test(webhook)) return formError("The webhook is an https:// URL.", $("webhook"));
    body.webhook = webhook;
  }
  if (!(await ensureToken())) return;
  const button = $("submit-job");
  button.disabled = true;
  try {
    const job = await api.submit(body);
    upsert(job, "reply");
    toast(`Job ${job.id.slice(0, 8)} submitted.`);
  } catch (error) {
    formError(describe(error));
  } finally {
    button.disabled = false;
  }
}

// ---- start ----------------------------------------------------------------------------------

async function start() {
  $("sign-in").addEventListener("click", signInFlow);
  $("sign-out").addEventListener("click", signOut);
  $("jobs").addEventListener("click", onJobsClick);
  $("load-more").addEventListener("click", loadPage);
  $("cancel-all").addEventListener("click", cancelAll);
  $("add-execution").addEventListener("click", () => addExecutionFields().querySelector("select").focus());
  $("submit-form").addEventListener("submit", submitJob);
  for (const node of document.querySelectorAll(".here")) node.textContent = location.origin;
  setInterval(() => tick($("jobs")), 1000);
  try {
    const me = await api.me(); // the cookie of an earlier sign-in, if any
    await showSignedIn(me.address);
  } catch {
    showSignedOut();
  }
  document.body.dataset.ready = "true";
}

start();
