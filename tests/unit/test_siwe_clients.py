"""Messages written by viem's createSiweMessage and the siwe library, signed by their signers
(tests/data/siwe-clients/, with how they were made): every one parses and verifies."""

from __future__ import annotations

from datetime import timedelta

import pytest

from runner import siwe
from tests.wallets import CLIENT_MESSAGES as CLIENTS


def test_both_libraries_and_their_fields_are_covered() -> None:
    texts = [case["message"] for case in CLIENTS.values()]
    assert {case["library"].split()[0] for case in CLIENTS.values()} == {"viem", "siwe"}
    for line in ("https://", "http://", "Chain ID: 8453", "Request ID: ", "Resources:", "Not Before: "):
        assert any(line in text for text in texts), line


@pytest.mark.parametrize(("name", "case"), CLIENTS.items())
def test_a_clients_message_parses_and_verifies(name: str, case: dict[str, str]) -> None:
    message = siwe.parse(case["message"])
    assert message.address == case["address"]
    assert message.to_text() == case["message"]  # nothing the parser does not understand
    now = message.time("issued_at")
    assert now is not None
    siwe.check(
        message,
        case["signature"],
        domains=frozenset({case["domain"]}),
        chain_ids=None,
        now=now + timedelta(minutes=1),
    )
