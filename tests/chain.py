"""A real Ethereum node for tests: anvil (Foundry's, from the npm registry), started on a free
port on 127.0.0.1, with the test wallet's factory deployed on it, and contract wallets that
sign as real ones do (ERC-1271 deployed, ERC-6492 counterfactual).

anvil is found from RUNNER_TEST_ANVIL, the npm install `.ci/run` makes (.ci/node), or the
PATH. Without it the tests that need it are skipped with the reason, except under CI (`CI`
set, or RUNNER_REQUIRE_ANVIL=1), where a missing anvil is a failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_abi.abi import encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from runner import erc6492

ROOT = Path(__file__).resolve().parents[1]
NPM_PACKAGES = ROOT / ".ci" / "node" / "node_modules" / "@foundry-rs"  # anvil-linux-amd64, -arm64
CONTRACTS = json.loads((ROOT / "tests" / "data" / "contracts" / "OwnedWallet.json").read_text())
CHAIN_ID = 31337  # anvil's default
INSTALL_HINT = (
    "npm install --prefix .ci/node @foundry-rs/anvil-linux-amd64 (as .ci/run does), "
    "or set RUNNER_TEST_ANVIL to an anvil binary"
)


def anvil_path() -> str | None:
    explicit = os.environ.get("RUNNER_TEST_ANVIL")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for found in sorted(NPM_PACKAGES.glob("anvil-*/bin/anvil")):
        if os.access(found, os.X_OK):
            return str(found)
    return shutil.which("anvil")


def anvil_required() -> bool:
    return os.environ.get("RUNNER_REQUIRE_ANVIL") == "1" or os.environ.get("CI", "").lower() not in (
        "",
        "0",
        "false",
    )


def _selector(name: str, method: str) -> bytes:
    return bytes.fromhex(CONTRACTS[name]["methods"][method])


@dataclass
class Anvil:
    url: str
    http: aiohttp.ClientSession
    factory: str = ""
    _ids: int = 0

    async def rpc(self, method: str, *params: Any) -> Any:
        self._ids += 1
        body = {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": list(params)}
        async with self.http.post(self.url, json=body) as resp:
            reply = await resp.json()
        assert "error" not in reply, (method, reply)
        return reply["result"]

    async def transact(self, data: bytes, to: str | None = None) -> dict[str, Any]:
        """A transaction from anvil's first (unlocked) account, mined at once; its receipt."""
        [sender] = (await self.rpc("eth_accounts"))[:1]
        tx: dict[str, Any] = {"from": sender, "data": "0x" + data.hex(), "gas": hex(5_000_000)}
        if to is not None:
            tx["to"] = to
        tx_hash = await self.rpc("eth_sendTransaction", tx)
        # Mining is ours (--no-mining): evm_mine answers once the block, and so the receipt, exists.
        await self.rpc("evm_mine")
        receipt: dict[str, Any] = await self.rpc("eth_getTransactionReceipt", tx_hash)
        assert receipt["status"] == "0x1", receipt
        return receipt

    async def code(self, address: str) -> str:
        code: str = await self.rpc("eth_getCode", address, "latest")
        return code

    async def deploy_factory(self) -> None:
        receipt = await self.transact(bytes.fromhex(CONTRACTS["WalletFactory"]["bytecode"][2:]))
        self.factory = to_checksum_address(receipt["contractAddress"])

    def deploy_call(self, owner: str, salt: bytes) -> bytes:
        """WalletFactory.deploy(owner, salt): what an ERC-6492 wrapper carries."""
        return _selector("WalletFactory", "deploy(address,bytes32)") + encode(
            ["address", "bytes32"], [owner, salt]
        )

    async def wallet_address(self, owner: str, salt: bytes) -> str:
        data = _selector("WalletFactory", "addressOf(address,bytes32)") + encode(
            ["address", "bytes32"], [owner, salt]
        )
        word: str = await self.rpc("eth_call", {"to": self.factory, "data": "0x" + data.hex()}, "latest")
        return to_checksum_address("0x" + word[-40:])


@dataclass
class ContractWallet:
    """An OwnedWallet at a CREATE2 address, deployed or not; its owner signs for it."""

    chain: Anvil
    owner: LocalAccount = field(default_factory=Account.create)
    salt: bytes = field(default_factory=lambda: os.urandom(32))
    address: str = ""

    async def setup(self, *, deploy: bool) -> ContractWallet:
        self.address = await self.chain.wallet_address(self.owner.address, self.salt)
        if deploy:
            await self.chain.transact(
                self.chain.deploy_call(self.owner.address, self.salt), to=self.chain.factory
            )
            assert await self.chain.code(self.address) != "0x"
        return self

    def sign_1271(self, text: str, signer: LocalAccount | None = None) -> bytes:
        """What the deployed wallet's owner signs: the message's EIP-191 hash itself."""
        from eth_account.messages import defunct_hash_message

        signed = (signer or self.owner).unsafe_sign_hash(defunct_hash_message(text=text))
        return bytes(signed.signature)

    def sign_6492(self, text: str, signer: LocalAccount | None = None) -> str:
        """Before deployment: abi.encode(factory, factoryCalldata, innerSig) ++ the magic suffix."""
        inner = self.sign_1271(text, signer)
        wrapped = encode(
            ["address", "bytes", "bytes"],
            [self.chain.factory, self.chain.deploy_call(self.owner.address, self.salt), inner],
        )
        return "0x" + (wrapped + erc6492.MAGIC_SUFFIX).hex()


@contextlib.asynccontextmanager
async def running_anvil() -> AsyncIterator[Anvil]:
    path = anvil_path()
    if path is None:
        reason = f"no anvil for the contract-wallet tests: {INSTALL_HINT}"
        if anvil_required():
            pytest.fail(reason)
        pytest.skip(reason)
    # Port 0: anvil binds a free port and says which, so no other process can take it first.
    proc = await asyncio.create_subprocess_exec(
        path,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--chain-id",
        str(CHAIN_ID),
        "--accounts",
        "1",
        "--no-mining",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(30):
            while not (match := re.search(r"Listening on (127\.0\.0\.1:\d+)", seen[-1] if seen else "")):
                line = await proc.stdout.readline()
                assert line, "anvil exited before listening:\n" + "".join(seen[-20:])
                seen.append(line.decode(errors="replace"))

        async def keep_reading() -> None:
            # anvil logs every call: read it all, or a full pipe would stall the node.
            assert proc.stdout is not None
            while await proc.stdout.read(65536):
                pass

        drain = asyncio.create_task(keep_reading(), name="anvil-stdout")
        async with aiohttp.ClientSession() as http:
            chain = Anvil(f"http://{match.group(1)}", http)
            assert int(await chain.rpc("eth_chainId"), 16) == CHAIN_ID
            await chain.deploy_factory()
            yield chain
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        if drain is not None:
            await drain
