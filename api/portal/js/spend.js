// The spend panel: GET /usage as totals and per backend, read again shortly after any job ends.
import { api, describe } from "./api.js";
import { toast } from "./dialogs.js";
import { el, formatGpu } from "./view.js";

const $ = (id) => document.getElementById(id);
let spendTimer = null;

export async function loadSpend() {
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

export function spendSoon() {
  if (spendTimer === null) spendTimer = setTimeout(loadSpend, 1000);
}
