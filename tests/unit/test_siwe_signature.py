"""How a signature's text is read: 0x optional (eth-account's hex() has none); a malformed one
is told apart from a well-formed one by another key."""

from __future__ import annotations

import pytest

from runner import siwe
from tests.wallets import Wallet

DOMAINS = frozenset({"runner.test"})


def _check(message: siwe.SiweMessage, signature: str) -> None:
    siwe.check(message, signature, domains=DOMAINS, chain_ids=None)


def test_a_signature_is_accepted_with_or_without_0x() -> None:
    wallet = Wallet()
    message = wallet.message("abcdefgh12")
    signature = wallet.sign(message.to_text())
    assert signature.startswith("0x")
    _check(message, signature)
    _check(message, signature[2:])
    _check(message, "0x" + signature[2:].upper())


# Any whole number of bytes may be a contract wallet's signature: only text that is no
# bytes at all is malformed.
@pytest.mark.parametrize(
    "malformed", ["", "0x", "not hex", "0x" + "zz" * 65, "0x" + "a" * 131, " 0x" + "ab" * 65]
)
def test_a_malformed_signature_is_said_to_be_malformed(malformed: str) -> None:
    wallet = Wallet()
    message = wallet.message("abcdefgh12")
    with pytest.raises(siwe.SiweError) as info:
        _check(message, malformed)
    assert info.value.reason is siwe.Reason.INVALID_SIGNATURE
    assert "malformed" in str(info.value) and "'s" not in str(info.value)


def test_another_keys_signature_is_not_the_addresss() -> None:
    wallet, other = Wallet(), Wallet()
    message = wallet.message("abcdefgh12")
    with pytest.raises(siwe.SiweError) as info:
        _check(message, other.sign(message.to_text())[2:])
    assert f"not {wallet.address}'s" in str(info.value) and "malformed" not in str(info.value)
