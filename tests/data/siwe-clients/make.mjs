// Makes messages.json: EIP-4361 messages as viem's createSiweMessage and the `siwe` library
// write them, each signed (EIP-191 personal_sign) by a fixed test key, by the library's own
// signer (viem's account, ethers' Wallet). Run outside the repository's dependencies:
//   npm install --prefix /tmp/siwe-clients viem siwe ethers@6
//   NODE_PATH=/tmp/siwe-clients/node_modules node tests/data/siwe-clients/make.mjs
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { createSiweMessage } = require("viem/siwe");
const { privateKeyToAccount } = require("viem/accounts");
const { SiweMessage } = require("siwe");
const { Wallet } = require("ethers");
// ethers' exports hide its package.json: read it beside its entry point's package root.
const version = (name) => {
  const root = require.resolve(name).split(`/node_modules/${name}/`)[0] + `/node_modules/${name}/package.json`;
  return JSON.parse(readFileSync(root, "utf8")).version;
};

// Test keys only: nothing holds funds under them.
const KEYS = ["0x" + "11".repeat(32), "0x" + "22".repeat(32), "0x" + "33".repeat(32)];
const ISSUED = "2026-01-15T09:30:00.000Z";
const LATER = "2099-12-31T23:59:59.000Z"; // valid whenever the tests run
const RESOURCES = ["ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
                   "https://runner.test/jobs?status=running", "urn:runner:scope:cancel"];
const out = {};

async function viem(name, key, fields) {
  const account = privateKeyToAccount(key);
  const message = createSiweMessage({ address: account.address, version: "1", ...fields });
  out[name] = { library: `viem ${version("viem")} createSiweMessage`, domain: fields.domain,
                address: account.address, message, signature: await account.signMessage({ message }) };
}

async function siwe(name, key, fields) {
  const wallet = new Wallet(key);
  const message = new SiweMessage({ address: wallet.address, version: "1", ...fields }).prepareMessage();
  out[name] = { library: `siwe ${version("siwe")} SiweMessage.prepareMessage, ethers ${version("ethers")} signMessage`,
                domain: fields.domain, address: wallet.address, message, signature: await wallet.signMessage(message) };
}

await viem("viem: required fields only", KEYS[0], {
  domain: "runner.test", uri: "https://runner.test", chainId: 1, nonce: "viemMinimal0001",
  issuedAt: new Date(ISSUED) });
await viem("viem: every field, Base", KEYS[1], {
  scheme: "https", domain: "runner.test", statement: "Sign in to the runner to see and cancel your jobs.",
  uri: "https://runner.test/login", chainId: 8453, nonce: "viemEveryField02", issuedAt: new Date(ISSUED),
  expirationTime: new Date(LATER), notBefore: new Date(ISSUED), requestId: "req-0042", resources: RESOURCES });
await viem("viem: http scheme, a port, Optimism", KEYS[2], {
  scheme: "http", domain: "localhost:8080", statement: "Sign in.", uri: "http://localhost:8080/",
  chainId: 10, nonce: "viemLocalhost003", issuedAt: new Date(ISSUED), expirationTime: new Date(LATER) });
await siwe("siwe: every field, Base", KEYS[0], {
  scheme: "https", domain: "runner.test", statement: "Sign in to the runner to see and cancel your jobs.",
  uri: "https://runner.test/login", chainId: 8453, nonce: "siweEveryField04", issuedAt: ISSUED,
  expirationTime: LATER, notBefore: ISSUED, requestId: "req-0043", resources: RESOURCES });
await siwe("siwe: no statement", KEYS[1], {
  domain: "runner.test", uri: "https://runner.test", chainId: 1, nonce: "siweNoStatement5", issuedAt: ISSUED });
await siwe("siwe: http scheme, a port, Arbitrum", KEYS[2], {
  scheme: "http", domain: "127.0.0.1:8080", statement: "Sign in.", uri: "http://127.0.0.1:8080/",
  chainId: 42161, nonce: "siwePortArb00006", issuedAt: ISSUED, expirationTime: LATER, requestId: "" });
writeFileSync(new URL("./messages.json", import.meta.url), JSON.stringify(out, null, 2) + "\n");
console.log(Object.keys(out).join("\n"));
