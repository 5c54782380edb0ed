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

export const api = {
  nonce: () => request("GET", "/auth/nonce"),
  login: (message, signature) => request("POST", "/auth/login", { message, signature }),
  logout: () => request("POST", "/auth/logout"),
  me: () => request("GET", "/auth/me"),
  backends: () => request("GET", "/backends"),
  usage: () => request("GET", "/usage"),
  jobs: (cursor) => request("GET", `/jobs?limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`),
  job: (id) => request("GET", `/jobs/${encodeURIComponent(id)}`),
  audit: (id) => request("GET", `/jobs/${encodeURIComponent(id)}/audit`),
  submit: (body) => request("POST", "/jobs", body),
  cancel: (id) => request("POST", `/jobs/${encodeURIComponent(id)}/cancel?wait=true`, {}),
  cancelExecution: (id, eid) =>
    request("POST", `/jobs/${encodeURIComponent(id)}/executions/${encodeURIComponent(eid)}/cancel`, {}),
  cancelAll: () => request("POST", "/jobs/cancel", {}),
  rerun: (id) => request("POST", `/jobs/${encodeURIComponent(id)}/rerun`, {}),
};
