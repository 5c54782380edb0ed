// The service's HTTP API, same origin. The session token lives in this module's memory only:
// state-changing calls send it as a Bearer header (which keeps CSRF out); GETs and the event
// stream ride on the HttpOnly session cookie that login sets, so a reload keeps the list.

let token = null;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** An error in words for a person: the API's message, a wallet's refusal, or a fallback. */
export function describe(error) {
  if (error instanceof ApiError) return error.message;
  if (error && error.code === 4001) return "The request was declined in the wallet.";
  if (error && typeof error.message === "string" && error.message) return error.message;
  return "Something went wrong.";
}

export function setToken(value) {
  token = value;
}

export function hasToken() {
  return token !== null;
}

export async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token !== null) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "unreachable", "The service cannot be reached. Check your connection and try again.");
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const message = payload && typeof payload.message === "string"
      ? payload.message
      : `The service answered ${response.status} ${response.statusText}.`;
    throw new ApiError(response.status, payload && payload.error ? String(payload.error) : "http_error", message);
  }
  return payload;
}

/** A reason, when given, rides in the body (POST /jobs/{id}/cancel and friends take one). */
const withReason = (body, reason) => (reason ? { ...body, reason } : body);

export const api = {
  nonce: () => request("GET", "/auth/nonce"),
  login: (message, signature) => request("POST", "/auth/login", { message, signature }),
  logout: () => request("POST", "/auth/logout"),
  me: () => request("GET", "/auth/me"),
  backends: () => request("GET", "/backends"),
  usage: () => request("GET", "/usage"),
  /** `query` is the filter as query parameters (filter.js), "" for none. */
  jobs: (cursor, query = "") =>
    request("GET", `/jobs?limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}${query ? `&${query}` : ""}`),
  job: (id) => request("GET", `/jobs/${encodeURIComponent(id)}`),
  audit: (id) => request("GET", `/jobs/${encodeURIComponent(id)}/audit`),
  submit: (body) => request("POST", "/jobs", body),
  cancel: (id, reason) => request("POST", `/jobs/${encodeURIComponent(id)}/cancel?wait=true`, withReason({}, reason)),
  cancelExecution: (id, eid, reason) =>
    request("POST", `/jobs/${encodeURIComponent(id)}/executions/${encodeURIComponent(eid)}/cancel`, withReason({}, reason)),
  /** POST /jobs/cancel: `filter` is the filter as a body (filter.js); {} cancels every active job. */
  cancelMatching: (filter, reason) => request("POST", "/jobs/cancel", withReason(filter, reason)),
  countMatching: (filter) => request("POST", "/jobs/cancel", { ...filter, dry_run: true }),
  rerun: (id) => request("POST", `/jobs/${encodeURIComponent(id)}/rerun`, {}),
};
