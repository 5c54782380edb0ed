// The page's modal parts: the confirmation dialog, the wallet chooser, and toasts.
import { el } from "./view.js";

const $ = (id) => document.getElementById(id);
const TOAST_MS = 8000;
const MAX_TOASTS = 2;

export function toast(text, kind = "info") {
  const item = el("p", { className: `toast toast-${kind}` }, text);
  const toasts = $("toasts");
  toasts.append(item);
  // The latest two at most: a burst of notes must not cover the page (the list shows state).
  while (toasts.children.length > MAX_TOASTS) toasts.firstElementChild.remove();
  setTimeout(() => item.remove(), TOAST_MS);
}

const SHOWN_IDS = 10;

/** Tab and Shift+Tab go round the dialog's own controls (a modal dialog's rest is inert, but
 * Tab would otherwise leave for the browser's own controls). */
function trapFocus(event) {
  if (event.key !== "Tab") return;
  const dialog = event.currentTarget;
  const controls = [...dialog.querySelectorAll("button, input, select, textarea, [href]")]
    .filter((node) => !node.disabled && !node.closest("[hidden]"));
  if (!controls.length) return;
  const first = controls[0];
  const last = controls[controls.length - 1];
  if (event.shiftKey && document.activeElement === first) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && document.activeElement === last) {
    event.preventDefault();
    first.focus();
  }
}

/**
 * Asks before acting. Resolves {reason} when the person confirms (reason "" when none was
 * typed), null on Escape or "Keep running". `ids`, when given, are listed (the first ten).
 */
export function confirmAction({ title, body, confirm, ids = null, total = null }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-body").textContent = body;
  $("confirm-yes").textContent = confirm;
  $("confirm-reason").value = "";
  const list = $("confirm-ids");
  list.hidden = !ids || ids.length === 0;
  if (ids) {
    const count = total ?? ids.length;
    const shown = ids.slice(0, SHOWN_IDS).map((id) => el("li", {}, el("code", { title: id }, id.slice(0, 8))));
    if (count > shown.length) shown.push(el("li", { className: "muted" }, `and ${count - shown.length} more`));
    list.replaceChildren(...shown);
  }
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-yes").removeEventListener("click", yes);
      $("confirm-no").removeEventListener("click", no);
      $("confirm-reason").removeEventListener("keydown", enter);
      dialog.removeEventListener("cancel", no);
      dialog.removeEventListener("keydown", trapFocus);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const yes = () => done({ reason: $("confirm-reason").value.trim() });
    const no = (event) => {
      if (event) event.preventDefault();
      done(null);
    };
    // Enter in the reason box does not confirm: confirming is the named button's job.
    const enter = (event) => {
      if (event.key === "Enter") event.preventDefault();
    };
    $("confirm-yes").addEventListener("click", yes);
    $("confirm-no").addEventListener("click", no);
    $("confirm-reason").addEventListener("keydown", enter);
    dialog.addEventListener("cancel", no);
    dialog.addEventListener("keydown", trapFocus);
    dialog.showModal();
    $("confirm-no").focus();
  });
}

export function chooseWallet(wallets) {
  if (wallets.length === 1) return Promise.resolve(wallets[0]);
  const dialog = $("wallets");
  const list = $("wallet-list");
  return new Promise((resolve) => {
    const done = (wallet) => {
      dialog.removeEventListener("close", closed);
      dialog.removeEventListener("keydown", trapFocus);
      if (dialog.open) dialog.close();
      resolve(wallet);
    };
    const closed = () => done(null);
    list.replaceChildren(...wallets.map((wallet) => {
      const button = el("button", { type: "button" },
        wallet.icon ? el("img", { src: wallet.icon, alt: "", width: 20, height: 20 }) : null, wallet.name);
      button.addEventListener("click", () => done(wallet));
      return el("li", {}, button);
    }));
    dialog.addEventListener("close", closed);
    dialog.addEventListener("keydown", trapFocus);
    dialog.showModal();
    list.querySelector("button").focus();
  });
}
