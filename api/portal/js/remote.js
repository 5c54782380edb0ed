// What an execution's remote cancel state proves, in words, for the kind of backend it ran
// on (docs/backends.md, "What a cancel proves, per provider"), and the GPU time that ran on after it.

let kinds = new Map(); // backend name -> kind, from GET /backends

export function setBackendKinds(backends) {
  kinds = new Map(backends.map((backend) => [backend.name, backend.kind]));
}

const PENDING = "A cancel is owed to the provider and is being sent; it is retried while the provider is down, throttled or refuses the key.";
const FAILED = "The provider refused the cancel for good; the execution's error says why.";
const GONE = "The provider no longer knows this work (its record expired: 404 / NOT_FOUND); nothing more can be sent or learnt.";

const ACKNOWLEDGED = {
  runpod: "RunPod accepted the cancel. It answers CANCELLED at once whatever the worker goes on doing, so this proves no stop; the job's executionTimeout bounds the run.",
  replicate: "Replicate accepted the cancel; the runner polls until the prediction is reported over.",
  fal: "fal accepted the cancel and passed it to the app, which may ignore it; the runner polls until fal reports the request over.",
  http: "The endpoint accepted the cancel request (its cancel_url) and the call was closed; whether it stopped its own work is up to it.",
};

const CONFIRMED = {
  replicate: "Replicate reports the prediction over after the cancel: stopped at its completed_at.",
  fal: "fal reports the request over (COMPLETED or 499): stopped, or, for an app without a cancel route, finished on its own.",
  demo: "Stopped here: the task ended.",
  subprocess: "Stopped here: the process and everything it started ended.",
};

/** The sentence for an execution's remote_cancel, or null when it has none. */
export function explainRemoteCancel(execution) {
  const kind = kinds.get(execution.backend);
  switch (execution.remote_cancel) {
    case "pending":
      return PENDING;
    case "acknowledged":
      return ACKNOWLEDGED[kind] || "The backend accepted the cancel; it reports no stop the runner could read.";
    case "confirmed":
      return CONFIRMED[kind] || "The provider reports the work over after the cancel.";
    case "gone":
      return GONE;
    case "failed":
      return FAILED;
    default:
      return null;
  }
}

/**
 * Seconds of work after a cancelled execution's cancel: from `finished_at` (the cancel's
 * commit) to `remote_stopped_at` (the work seen over), never below zero -- the rule GET
 * /usage sums as gpu_seconds_after_cancel. null when the stop is not known (yet).
 */
export function secondsAfterCancel(execution) {
  if (execution.status !== "cancelled" || !execution.finished_at || !execution.remote_stopped_at) return null;
  return Math.max(0, (Date.parse(execution.remote_stopped_at) - Date.parse(execution.finished_at)) / 1000);
}

/** Whether the work may still run at its provider after the cancel (no stop seen yet). */
export function mayRunOn(execution) {
  return execution.status === "cancelled" && !execution.remote_stopped_at
    && (execution.remote_cancel === "pending" || execution.remote_cancel === "acknowledged");
}
