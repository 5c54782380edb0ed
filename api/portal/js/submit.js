// The submit form: one fieldset per execution (backend from GET /backends, JSON input).
import { api, describe } from "./api.js";
import { el } from "./view.js";

const $ = (id) => document.getElementById(id);
let backends = [];
let hooks = { ensureToken: async () => false, submitted: () => {} };

// What each kind of backend takes, as the input box's placeholder.
const INPUT_EXAMPLES = {
  demo: '{"seconds": 5}',
  http: '{"prompt": "a red fox in the snow"}',
  runpod: '{"prompt": "a red fox in the snow"}',
  replicate: '{"prompt": "a red fox in the snow"}',
  fal: '{"prompt": "a red fox in the snow", "num_images": 1}',
  subprocess: '{"any": "JSON, given to the command on its stdin"}',
};

/** The configured backends, put in every backend select; [] when they cannot be read. */
export async function loadBackends() {
  let error = null;
  try {
    backends = (await api.backends()).backends;
  } catch (caught) {
    backends = [];
    error = caught;
  }
  for (const select of document.querySelectorAll("select[name=backend]")) fillBackends(select);
  if (!document.querySelector(".execution-fields")) addExecutionFields();
  if (error) throw error;
  return backends;
}

function fillBackends(select) {
  const chosen = select.value;
  select.replaceChildren(...backends.map((backend) => el("option", { value: backend.name }, backend.name)));
  if (chosen) select.value = chosen;
  select.dispatchEvent(new Event("change")); // its input's example follows the backend
}

function inputExample(name) {
  const backend = backends.find((b) => b.name === name);
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
  if (!(await hooks.ensureToken())) return;
  const button = $("submit-job");
  button.disabled = true;
  try {
    hooks.submitted(await api.submit(body));
  } catch (error) {
    formError(describe(error));
  } finally {
    button.disabled = false;
  }
}

/** `ensureToken()` before sending; `submitted(job)` with the service's reply. */
export function setupSubmitForm(given) {
  hooks = given;
  $("add-execution").addEventListener("click", () => addExecutionFields().querySelector("select").focus());
  $("submit-form").addEventListener("submit", submitJob);
}
