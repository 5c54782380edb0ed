"""Which client a rate limit counts a request against: the peer, unless a proxy is trusted."""

from __future__ import annotations

from unittest import mock

from aiohttp.test_utils import make_mocked_request

from api.ratelimit import client_key


def _request(peer: str, **headers: str) -> object:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 1234) if name == "peername" else default
    )
    return make_mocked_request("GET", "/auth/nonce", headers=headers, transport=transport)


def test_without_a_trusted_proxy_the_peer_is_the_client() -> None:
    req = _request("10.0.0.9", **{"Fly-Client-IP": "1.2.3.4", "X-Forwarded-For": "5.6.7.8"})
    assert client_key(req, ()) == "10.0.0.9"  # type: ignore[arg-type]


def test_behind_fly_the_fly_client_ip_is_the_client() -> None:
    req = _request("172.16.0.2", **{"Fly-Client-IP": "1.2.3.4", "X-Forwarded-For": "9.9.9.9, 1.2.3.4"})
    assert client_key(req, ("fly",)) == "1.2.3.4"  # type: ignore[arg-type]
    assert client_key(_request("172.16.0.2"), ("fly",)) == "172.16.0.2"  # type: ignore[arg-type]


def test_a_listed_proxy_forwards_the_first_address_it_does_not_trust() -> None:
    # The leftmost entries are whatever the client wrote: only those the proxies added count.
    req = _request("10.0.0.1", **{"X-Forwarded-For": "6.6.6.6, 1.2.3.4, 10.0.0.2"})
    assert client_key(req, ("10.0.0.1", "10.0.0.2")) == "1.2.3.4"  # type: ignore[arg-type]
    # From a peer that is not a listed proxy, the header is the client's own word.
    req = _request("8.8.8.8", **{"X-Forwarded-For": "1.2.3.4"})
    assert client_key(req, ("10.0.0.1",)) == "8.8.8.8"  # type: ignore[arg-type]
