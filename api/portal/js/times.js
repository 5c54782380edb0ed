// Times on the page, relative ("3 min ago") or absolute as the person chooses; the other form
// is in the element's tooltip. The choice is remembered in localStorage once it is made (a
// display preference, nothing secret: the session token never goes there).

const KEY = "runner.times";
let mode = "relative";

export function loadTimeMode() {
  try {
    mode = localStorage.getItem(KEY) === "absolute" ? "absolute" : "relative";
  } catch {
    mode = "relative"; // storage refused (a privacy mode): the default, not remembered
  }
  return mode;
}

export function setTimeMode(value) {
  mode = value === "absolute" ? "absolute" : "relative";
  try {
    localStorage.setItem(KEY, mode);
  } catch {
    // Not remembered across reloads, still applied on this page.
  }
}

export function timeMode() {
  return mode;
}

export function absolute(iso) {
  return new Date(iso).toLocaleString();
}

export function relative(iso, now = Date.now()) {
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  const future = seconds < 0;
  const s = Math.abs(seconds);
  let text;
  if (s < 10) return "just now";
  if (s < 60) text = `${s} s`;
  else if (s < 3600) text = `${Math.floor(s / 60)} min`;
  else if (s < 86400) text = `${Math.floor(s / 3600)} h`;
  else text = `${Math.floor(s / 86400)} day${s < 172800 ? "" : "s"}`;
  return future ? `in ${text}` : `${text} ago`;
}

function fill(node, now) {
  const iso = node.dateTime;
  const [shown, other] = mode === "relative" ? [relative(iso, now), absolute(iso)] : [absolute(iso), relative(iso, now)];
  node.textContent = shown;
  node.title = other;
}

/** A <time> element in the chosen form, the other in its title. */
export function timeElement(iso, now = Date.now()) {
  const node = document.createElement("time");
  node.dateTime = iso;
  node.className = "when";
  fill(node, now);
  return node;
}

/** Rewrite every time under `root` (after a change of mode, and each second for "ago"). */
export function refreshTimes(root, now = Date.now()) {
  for (const node of root.querySelectorAll("time.when")) fill(node, now);
}
