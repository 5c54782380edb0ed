"""Webhooks without a server: where one may go, its signature (checked by the
`standardwebhooks` library), the retry schedule and the settings."""

from __future__ import annotations

import ipaddress
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from runner.config import load_settings
from runner.errors import ConfigError
from runner.webhooks.addresses import CheckedResolver, Refused, check_url, refusal
from runner.webhooks.delivery import RETRY_CAP_S, retry_delay_s
from runner.webhooks.signing import new_secret, signature_header


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), allow_private=False) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), allow_private=False) is None


def test_the_setting_opens_private_addresses_but_never_the_metadata_service() -> None:
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow_private=True) is None
    assert refusal(ipaddress.ip_address("10.0.0.1"), allow_private=True) is None
    for metadata in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
        assert refusal(ipaddress.ip_address(metadata), allow_private=True) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/",
        "ftp://example.com/",
        "https://",
        "example.com",
        "https://user:pw@example.com/",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/\n",
        42,
        None,
        "https://example.com/" + "x" * 2100,
    ],
)
def test_urls_refused_by_form(url: object) -> None:
    with pytest.raises(Refused):
        check_url(url, allow_http=False)


def test_http_only_when_allowed() -> None:
    assert check_url("http://example.com/h", allow_http=True) == "http://example.com/h"
    assert check_url("https://example.com/h?x=1", allow_http=False) == "https://example.com/h?x=1"


async def test_the_delivery_resolver_leaves_out_refused_addresses() -> None:
    resolver = CheckedResolver(allow_private=False)
    try:
        with pytest.raises(OSError, match="no address a webhook may use"):
            await resolver.resolve("localhost", 443)
    finally:
        await resolver.close()
    opened = CheckedResolver(allow_private=True)
    try:
        assert await opened.resolve("localhost", 443)
    finally:
        await opened.close()


def test_the_standard_library_verifies_the_signature_with_either_secret() -> None:
    old, new = new_secret(), new_secret()
    assert new.startswith("whsec_") and old != new
    body, stamp = b'{"type": "job.completed", "data": {}}', int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature_header([new, old], "msg_1", stamp, body),
    }
    assert Webhook(new).verify(body, headers)["type"] == "job.completed"
    assert Webhook(old).verify(body, headers)["type"] == "job.completed"  # a rotation's overlap
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body + b" ", headers)  # the body is what is signed


def test_retries_back_off_with_jitter_up_to_an_hour() -> None:
    delays = [retry_delay_s(n, 5.0) for n in range(1, 20)]
    assert 2.5 <= delays[0] <= 5.0 and 5.0 <= delays[1] <= 10.0
    assert all(d <= RETRY_CAP_S for d in delays) and delays[-1] >= RETRY_CAP_S / 2
    assert len({retry_delay_s(3, 5.0) for _ in range(20)}) > 1  # jittered


def test_webhook_settings() -> None:
    assert load_settings({}).webhook_allow_http is False
    assert load_settings({}).webhook_allow_private is False
    settings = load_settings({"RUNNER_WEBHOOK_ALLOW_HTTP": "1", "RUNNER_WEBHOOK_ALLOW_PRIVATE": "true"})
    assert settings.webhook_allow_http and settings.webhook_allow_private
    for name in ("RUNNER_WEBHOOK_ALLOW_HTTP", "RUNNER_WEBHOOK_ALLOW_PRIVATE"):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: "maybe"})
