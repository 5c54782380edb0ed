// Compiles the Solidity this project vendors as bytecode, with solc-js (the npm `solc`
// package): the ERC-6492 validator the service sends in its eth_call, and the test wallet.
// Run from the repository's root after `npm install --prefix DIR solc@VERSION` in a
// directory outside the repository:
//   NODE_PATH=DIR/node_modules node tests/data/contracts/compile.mjs
// It rewrites runner/data/erc6492/ValidateSigOffchain.hex and tests/data/contracts/OwnedWallet.json.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";

const solc = createRequire(import.meta.url)("solc");
// "paris": no PUSH0 or MCOPY, so the code runs on chains that lag behind mainnet's forks.
// viaIR: the validator's isValidSigImpl is "stack too deep" for the legacy code generator.
const SETTINGS = { optimizer: { enabled: true, runs: 200 }, evmVersion: "paris", viaIR: true,
                   outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.methodIdentifiers"] } } };

function compile(path) {
  const input = { language: "Solidity", sources: { [path]: { content: readFileSync(path, "utf8") } }, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  if (errors.length) throw new Error(errors.map((e) => e.formattedMessage).join("\n"));
  return output.contracts[path];
}

const compiler = `solc-js ${solc.version()}, viaIR, optimizer on (200 runs), evmVersion paris`;
const validator = compile("runner/data/erc6492/UniversalSigValidator.sol").ValidateSigOffchain;
writeFileSync("runner/data/erc6492/ValidateSigOffchain.hex", "0x" + validator.evm.bytecode.object + "\n");
const wallet = compile("tests/data/contracts/OwnedWallet.sol");
const out = { compiler };
for (const name of ["OwnedWallet", "WalletFactory"]) {
  out[name] = { abi: wallet[name].abi, bytecode: "0x" + wallet[name].evm.bytecode.object,
                methods: wallet[name].evm.methodIdentifiers };
}
writeFileSync("tests/data/contracts/OwnedWallet.json", JSON.stringify(out, null, 1) + "\n");
console.log(compiler);
