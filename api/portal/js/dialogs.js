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

/** Resolves true when the person confirms; Escape or "Keep running" resolve false. */
export function confirmAction({ title, body, confirm }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-body").textContent = body;
  $("confirm-yes").textContent = confirm;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-yes").removeEventListener("click", yes);
      $("confirm-no").removeEventListener("click", no);
      dialog.removeEventListener("cancel", no);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const yes = () => done(true);
    const no = (event) => {
      if (event) event.preventDefault();
      done(false);
    };
    $("confirm-yes").addEventListener("click", yes);
    $("confirm-no").addEventListener("click", no);
    dialog.addEventListener("cancel", no);
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
    dialog.showModal();
    list.querySelector("button").focus();
  });
}
