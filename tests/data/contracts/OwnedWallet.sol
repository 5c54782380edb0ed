// SPDX-License-Identifier: MIT
// Test contracts (this project's own, MIT like the project): the smallest ERC-1271 wallet
// and a CREATE2 factory for it, to sign in to the runner as a contract wallet does, deployed
// (ERC-1271) and counterfactual (ERC-6492). Compiled into OwnedWallet.json: see README.md.
pragma solidity ^0.8.19;

/// Valid when the owner's key signed the hash itself (65 bytes r, s, v).
contract OwnedWallet {
    address public immutable owner;

    constructor(address _owner) {
        owner = _owner;
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 65) return 0xffffffff;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (v < 27) v += 27;
        address signer = ecrecover(hash, v, r, s);
        return signer != address(0) && signer == owner ? bytes4(0x1626ba7e) : bytes4(0xffffffff);
    }
}

/// Deploys an OwnedWallet at an address known before it exists (CREATE2).
contract WalletFactory {
    function deploy(address owner, bytes32 salt) external returns (address) {
        address wallet = addressOf(owner, salt);
        if (wallet.code.length > 0) return wallet;  // deployed already: the call stays harmless
        return address(new OwnedWallet{salt: salt}(owner));
    }

    function addressOf(address owner, bytes32 salt) public view returns (address) {
        bytes32 initCode = keccak256(abi.encodePacked(type(OwnedWallet).creationCode, abi.encode(owner)));
        return address(uint160(uint256(keccak256(abi.encodePacked(bytes1(0xff), address(this), salt, initCode)))));
    }
}
