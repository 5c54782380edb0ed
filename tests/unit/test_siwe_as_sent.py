"""A message is checked as the wallet signed it: any address case EIP-4361 allows, a chain id
written with leading zeros or absurdly long, a signature with or without its 0x."""

from __future__ import annotations

import pytest

from runner import siwe
from tests.wallets import Wallet

DOMAINS = frozenset({"runner.test"})


def _sent(wallet: Wallet, **replace: str) -> str:
    """A message as a client might write it: the canonical text with some of it rewritten."""
    text = wallet.message("abcdefgh12").to_text()
    for old, new in replace.items():
        text = text.replace(old, new, 1)
    return text


def _check(text: str, signature: str) -> siwe.SiweMessage:
    message = siwe.parse(text)
    siwe.check(message, signature, domains=DOMAINS, chain_ids=None)
    return message


@pytest.mark.parametrize("case", ["lower", "upper"])
def test_an_address_in_one_case_is_checked_as_sent_and_named_checksummed(case: str) -> None:
    wallet = Wallet()
    written = "0x" + getattr(wallet.address[2:], case)()
    text = _sent(wallet, **{wallet.address: written})
    assert written in text.split("\n")
    message = _check(text, wallet.sign(text))
    assert message.address == wallet.address  # EIP-55, whatever the message wrote


def test_a_mixed_case_address_with_a_wrong_checksum_is_refused() -> None:
    wallet = Wallet()
    hexdigits = wallet.address[2:]
    # Flip the case of the first letter: still mixed case, no longer EIP-55.
    at = next(i for i, c in enumerate(hexdigits) if c.isalpha())
    wrong = "0x" + hexdigits[:at] + hexdigits[at].swapcase() + hexdigits[at + 1 :]
    text = _sent(wallet, **{wallet.address: wrong})
    with pytest.raises(siwe.SiweError) as info:
        _check(text, wallet.sign(text))
    assert info.value.reason is siwe.Reason.INVALID_MESSAGE
    assert "checksum" in info.value.message


def test_a_chain_id_with_leading_zeros_is_checked_as_sent() -> None:
    wallet = Wallet()
    text = _sent(wallet, **{"Chain ID: 1": "Chain ID: 001"})
    message = _check(text, wallet.sign(text))
    assert message.chain_id == 1


@pytest.mark.parametrize("digits", ["9" * 79, "9" * 5000, "0" * 5000 + "1", str(2**256)])
def test_a_chain_id_of_any_length_is_invalid_message(digits: str) -> None:
    wallet = Wallet()
    text = _sent(wallet, **{"Chain ID: 1": f"Chain ID: {digits}"})
    with pytest.raises(siwe.SiweError) as info:
        siwe.parse(text)
    assert info.value.reason is siwe.Reason.INVALID_MESSAGE
    assert "chain id" in info.value.message


def test_the_largest_chain_id_parses() -> None:
    wallet = Wallet()
    text = _sent(wallet, **{"Chain ID: 1": f"Chain ID: {2**256 - 1}"})
    assert _check(text, wallet.sign(text)).chain_id == 2**256 - 1


def test_a_signature_without_its_0x_is_accepted() -> None:
    wallet = Wallet()
    text = _sent(wallet)
    _check(text, wallet.sign(text).removeprefix("0x"))


@pytest.mark.parametrize(
    "signature",
    ["", "0x", "not hex", "0x" + "zz" * 65, "0x" + "1" * 129, "0x0x" + "11" * 65, "0x" + "ab" * 70_000],
)
def test_a_signature_that_is_not_hex_of_a_possible_length_is_malformed(signature: str) -> None:
    wallet = Wallet()
    text = _sent(wallet)
    with pytest.raises(siwe.SiweError) as info:
        _check(text, signature)
    assert info.value.reason is siwe.Reason.INVALID_SIGNATURE
    assert "malformed" in info.value.message


def test_another_keys_signature_is_not_called_malformed() -> None:
    wallet = Wallet()
    text = _sent(wallet)
    with pytest.raises(siwe.SiweError) as info:
        _check(text, Wallet().sign(text))
    assert info.value.reason is siwe.Reason.INVALID_SIGNATURE
    assert "malformed" not in info.value.message
