// The portal: sign in with a wallet, then the caller's jobs, live on one GET /events stream.
import { refreshAudit, setupActions } from "./actions.js";
import { api, ApiError, describe, hasToken, setToken } from "./api.js";
import { clearSelection, forget, selected, setupBulk, showButtons } from "./bulk.js";
import { chooseWallet, toast } from "./dialogs.js";
import { isServerFiltered, matches, readFilter, toQuery } from "./filter.js";
import { setBackendKinds } from "./remote.js";
import { loadSpend, spendSoon } from "./spend.js";
import { loadBackends, setupSubmitForm } from "./submit.js";
import { loadTimeMode, refreshTimes, setTimeMode, timeMode } from "./times.js";
import { ACTIVE, el, renderJob, tick } from "./view.js";
import { discoverWallets, shortAddress, signIn } from "./wallet.js";

const $ = (id) => document.getElementById(id);

const state = {
  address: null,
  jobs: new Map(), // id -> {job, node, ui}
  cursor: null,
  stream: null,
  filter: readFilter(),
  generation: 0, // a list read begun before the latest filter change is dropped
};

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
    await Promise.all([loadBackendChoices(), startStream(), loadSpend()]);
  }
}

function showSignedOut() {
  if (state.stream) state.stream.close();
  state.stream = null;
  state.address = null;
  state.jobs.clear();
  state.cursor = null;
  clearSelection();
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
  return {
    cancelling: false, rerunning: false, cancellingExecutions: new Set(), open: new Set(), audit: null, selected: false,
  };
}

function render(entry) {
  // Re-rendering must not lose the keyboard's place: focus returns to the same control.
  const focused = entry.node.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  for (const details of entry.node.querySelectorAll("details")) {
    if (details.open) entry.ui.open.add(details.dataset.key);
    else entry.ui.open.delete(details.dataset.key);
  }
  entry.ui.selected = selected.has(entry.job.id);
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
 * A job shown stays shown when it changes (a cancelled row does not vanish under the
 * pointer); one not shown is added only if it matches the filter.
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
      forget(job.id);
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
  // The service filtered the list but for id prefixes; the stream brings every job.
  if (!matches(job, source === "list" ? { ...state.filter, statuses: [], backends: [], ids: [], metadata: {} } : state.filter)) {
    return;
  }
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
  const generation = state.generation;
  button.disabled = true;
  try {
    const page = await api.jobs(state.cursor, toQuery(state.filter));
    if (generation !== state.generation) return;
    for (const job of page.jobs) upsert(job, "list");
    state.cursor = page.next_cursor;
    button.hidden = !page.next_cursor;
    showEmpty();
  } catch (error) {
    toast(describe(error), "error");
  } finally {
    button.disabled = false;
  }
}

function showEmpty() {
  const empty = $("jobs-empty");
  empty.hidden = state.jobs.size > 0;
  empty.textContent = isServerFiltered(state.filter) || state.filter.prefixes.length
    ? `No job matches the filter${state.cursor ? " among those loaded: Load more reads older ones" : ""}.`
    : "No jobs yet: submit one with the form.";
}

async function reloadList() {
  state.generation += 1;
  state.jobs.clear();
  state.cursor = null;
  clearSelection();
  $("jobs").replaceChildren();
  await loadPage();
}

// ---- the filter -----------------------------------------------------------------------------

let searchTimer = null;

/** Read the controls and reload the list with them (a bad search word is said, not sent). */
function applyFilter() {
  clearTimeout(searchTimer);
  const filter = readFilter();
  $("filter-error").textContent = filter.error || "";
  if (filter.error) return;
  if (toQuery(filter) === toQuery(state.filter) && filter.prefixes.join() === state.filter.prefixes.join()) return;
  state.filter = filter;
  showButtons();
  reloadList();
}

function setupFilter() {
  const form = $("filter");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilter();
  });
  $("filter-status").addEventListener("change", applyFilter);
  $("filter-backend").addEventListener("change", applyFilter);
  // Typing settles before the list is read again.
  $("filter-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(applyFilter, 300);
  });
  $("clear-filter").addEventListener("click", () => {
    $("filter-status").value = "";
    $("filter-backend").value = "";
    $("filter-search").value = "";
    applyFilter();
    $("filter-status").focus();
  });
  $("time-mode").value = loadTimeMode();
  $("time-mode").addEventListener("change", () => {
    setTimeMode($("time-mode").value);
    refreshTimes(document);
  });
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

// ---- backends -------------------------------------------------------------------------------

async function loadBackendChoices() {
  let backends = [];
  try {
    backends = await loadBackends();
  } catch (error) {
    toast(describe(error), "error");
  }
  setBackendKinds(backends);
  const select = $("filter-backend");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "Any"),
    ...backends.map((backend) => el("option", { value: backend.name }, backend.name)));
  select.value = chosen;
  for (const entry of state.jobs.values()) render(entry); // the remote cancels' words name the kind
}

// ---- start ----------------------------------------------------------------------------------

async function start() {
  $("sign-in").addEventListener("click", signInFlow);
  $("sign-out").addEventListener("click", signOut);
  $("load-more").addEventListener("click", loadPage);
  setupActions({
    entry: (id) => state.jobs.get(id), entries: () => [...state.jobs.values()], upsert, render, ensureToken,
  });
  setupSubmitForm({
    ensureToken,
    submitted: (job) => {
      upsert(job, "reply");
      toast(`Job ${job.id.slice(0, 8)} submitted.`);
    },
  });
  setupFilter();
  setupBulk({ entries: () => [...state.jobs.values()], filter: () => state.filter, ensureToken, render });
  showButtons();
  for (const node of document.querySelectorAll(".here")) node.textContent = location.origin;
  setInterval(() => {
    tick($("jobs"));
    if (timeMode() === "relative") refreshTimes($("jobs"));
  }, 1000);
  try {
    const me = await api.me(); // the cookie of an earlier sign-in, if any
    await showSignedIn(me.address);
  } catch {
    showSignedOut();
  }
  document.body.dataset.ready = "true";
}

start();
