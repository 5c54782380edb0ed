// The jobs list's filter: the controls above the list, read into one object that becomes
// GET /jobs query parameters, a POST /jobs/cancel body, and a test for stream updates.
//
// The search box takes words: `key=value` matches a metadata pair exactly (the service's
// rule); a whole UUID is sent as `ids` (the service finds it even on a page not loaded);
// anything else is an id prefix, matched here over the jobs loaded so far (the API has no
// prefix search): "Load more" brings older ones, matched the same way.

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const $ = (id) => document.getElementById(id);

/** The filter as the controls show it: {statuses, backends, metadata, ids, prefixes, error}. */
export function readFilter() {
  const status = $("filter-status").value;
  const backend = $("filter-backend").value;
  const filter = { statuses: status ? status.split(",") : [], backends: backend ? [backend] : [], metadata: {}, ids: [], prefixes: [], error: null };
  for (const word of $("filter-search").value.trim().split(/\s+/).filter(Boolean)) {
    const equals = word.indexOf("=");
    if (equals > 0) filter.metadata[word.slice(0, equals)] = word.slice(equals + 1);
    else if (equals === 0) filter.error = `"${word}" has no key before "=": write key=value.`;
    else if (UUID.test(word)) filter.ids.push(word.toLowerCase());
    else if (/^[0-9a-f-]+$/i.test(word)) filter.prefixes.push(word.toLowerCase());
    else filter.error = `"${word}" is neither an id (or its start) nor a key=value pair.`;
  }
  return filter;
}

/** Whether the service is asked to filter (the id prefixes are matched here only). */
export function isServerFiltered(filter) {
  return filter.statuses.length > 0 || filter.backends.length > 0 || filter.ids.length > 0
    || Object.keys(filter.metadata).length > 0;
}

export function isFiltered(filter) {
  return isServerFiltered(filter) || filter.prefixes.length > 0;
}

/** GET /jobs query parameters ("" without a filter). */
export function toQuery(filter) {
  const params = new URLSearchParams();
  if (filter.statuses.length) params.set("statuses", filter.statuses.join(","));
  if (filter.backends.length) params.set("backends", filter.backends.join(","));
  if (filter.ids.length) params.set("ids", filter.ids.join(","));
  for (const [key, value] of Object.entries(filter.metadata)) params.set(`meta.${key}`, value);
  return params.toString();
}

const ACTIVE_STATUSES = ["queued", "running"];

/**
 * The POST /jobs/cancel body's filter fields, or null when the filter can match no active
 * job (a status filter of finished statuses only: the route takes queued and running).
 */
export function toBody(filter) {
  const body = {};
  if (filter.statuses.length) {
    body.statuses = filter.statuses.filter((status) => ACTIVE_STATUSES.includes(status));
    if (body.statuses.length === 0) return null;
  }
  if (filter.backends.length) body.backends = filter.backends;
  if (filter.ids.length) body.ids = filter.ids;
  if (Object.keys(filter.metadata).length) body.metadata = filter.metadata;
  return body;
}

/** The same rule the service applies, for jobs the stream brings (and the id prefixes). */
export function matches(job, filter) {
  if (filter.statuses.length && !filter.statuses.includes(job.status)) return false;
  if (filter.backends.length && !job.executions.some((e) => filter.backends.includes(e.backend))) return false;
  if (filter.ids.length && !filter.ids.includes(job.id)) return false;
  if (filter.prefixes.length && !filter.prefixes.some((p) => job.id.startsWith(p))) return false;
  const metadata = job.metadata || {};
  for (const [key, value] of Object.entries(filter.metadata)) {
    // The service's rule for meta.KEY=VALUE: the stored value is that very string.
    if (metadata[key] !== value) return false;
  }
  return true;
}

/** "status running, backend gpu, project=x" for the dialogs. */
export function describeFilter(filter) {
  const parts = [];
  if (filter.statuses.length) parts.push(`status ${filter.statuses.join(" or ")}`);
  if (filter.backends.length) parts.push(`backend ${filter.backends.join(" or ")}`);
  for (const [key, value] of Object.entries(filter.metadata)) parts.push(`${key}=${value}`);
  if (filter.ids.length) parts.push(`id ${filter.ids.map((id) => id.slice(0, 8)).join(" or ")}`);
  if (filter.prefixes.length) parts.push(`id starting ${filter.prefixes.join(" or ")}`);
  return parts.join(", ");
}
