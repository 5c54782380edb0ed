// Sign-In with Ethereum from the browser: EIP-6963 discovery (or window.ethereum), an
// EIP-4361 message for this page's host, the wallet's personal_sign, then the API's login.
import { keccak_256 } from "../vendor/noble-hashes/sha3.js";
import { api } from "./api.js";

const DISCOVERY_MS = 150;

/** The wallets in this browser: [{name, icon, provider}], EIP-6963 announcements first. */
export function discoverWallets() {
  return new Promise((resolve) => {
    const found = new Map();
    const onAnnounce = (event) => {
      const detail = event.detail;
      if (!detail || !detail.provider || typeof detail.provider.request !== "function") return;
      const info = detail.info || {};
      const key = String(info.uuid || info.rdns || info.name || found.size);
      found.set(key, { name: String(info.name || "Wallet"), icon: info.icon, provider: detail.provider });
    };
    window.addEventListener("eip6963:announceProvider", onAnnounce);
    window.dispatchEvent(new Event("eip6963:requestProvider"));
    setTimeout(() => {
      window.removeEventListener("eip6963:announceProvider", onAnnounce);
      const wallets = [...found.values()];
      if (wallets.length === 0 && window.ethereum && typeof window.ethereum.request === "function") {
        wallets.push({ name: "Browser wallet", icon: null, provider: window.ethereum });
      }
      resolve(wallets);
    }, DISCOVERY_MS);
  });
}

/** EIP-55: wallets hand out lowercase addresses; EIP-4361 wants the checksummed form. */
export function toChecksumAddress(address) {
  if (!/^0x[0-9a-fA-F]{40}$/.test(address)) throw new Error(`not an address: ${address}`);
  const lower = address.slice(2).toLowerCase();
  const hash = keccak_256(new TextEncoder().encode(lower));
  let out = "0x";
  for (let i = 0; i < lower.length; i++) {
    const nibble = (hash[i >> 1] >> (i % 2 === 0 ? 4 : 0)) & 0x0f;
    out += nibble >= 8 ? lower[i].toUpperCase() : lower[i];
  }
  return out;
}

/** The EIP-4361 message, field for field in the order the standard gives. */
export function siweMessage({ domain, address, statement, uri, chainId, nonce, issuedAt }) {
  return [
    `${domain} wants you to sign in with your Ethereum account:`,
    address,
    "",
    statement,
    "",
    `URI: ${uri}`,
    "Version: 1",
    `Chain ID: ${chainId}`,
    `Nonce: ${nonce}`,
    `Issued At: ${issuedAt}`,
  ].join("\n");
}

function utf8Hex(text) {
  let hex = "0x";
  for (const byte of new TextEncoder().encode(text)) hex += byte.toString(16).padStart(2, "0");
  return hex;
}

/** Sign in with one wallet; returns the login's {token, address, expires_at}. */
export async function signIn(provider) {
  const accounts = await provider.request({ method: "eth_requestAccounts" });
  if (!Array.isArray(accounts) || accounts.length === 0) throw new Error("The wallet shared no account.");
  const address = toChecksumAddress(String(accounts[0]));
  const chainId = Number.parseInt(String(await provider.request({ method: "eth_chainId" })), 16);
  const { nonce } = await api.nonce();
  const message = siweMessage({
    domain: window.location.host,
    address,
    statement: "Sign in to the runner to see and cancel your jobs.",
    uri: window.location.origin,
    chainId,
    nonce,
    issuedAt: new Date().toISOString(),
  });
  const signature = await provider.request({ method: "personal_sign", params: [utf8Hex(message), address] });
  // As given, whatever its length: a contract wallet's (ERC-1271, ERC-6492) runs to thousands
  // of hex digits, and the server checks it on chain.
  return api.login(message, String(signature));
}

/** The short form shown in the header: 0xAbCd…1234. */
export function shortAddress(address) {
  return `${address.slice(0, 6)}…${address.slice(-4)}`;
}
