"""Where a webhook may go: an https URL (http only when allowed) whose host resolves to public
addresses only. Checked at submit, and again at each delivery by the resolver the delivery
client connects through (DNS can change between the two: the client connects only to an
address that was checked)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

MAX_URL_CHARS = 2048
RESOLVE_TIMEOUT_S = 5.0
# Cloud metadata services: never a webhook, whatever the settings (they hand out credentials).
METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(ValueError):
    """The URL or the address it leads to is not one a webhook may use."""


def check_url(url: object, *, allow_http: bool) -> str:
    """The URL's form: https (or http when allowed), a host, no credentials in it."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise Refused(f"must be an https URL of at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise Refused("is not a URL") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme.lower() not in schemes:
        allowed = "https or http" if allow_http else "https (http needs RUNNER_WEBHOOK_ALLOW_HTTP=1)"
        raise Refused(f"must be {allowed}")
    if not parts.hostname:
        raise Refused("has no host")
    if "@" in parts.netloc:
        # The signature authenticates us; credentials in the URL would only be shown back.
        raise Refused("must not carry credentials (user:password@); verify the signature instead")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise Refused("must not contain spaces or control characters")
    return url


def refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why a delivery must not connect to `address`, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if address in METADATA:
        return f"{address} is a cloud metadata address"
    if allow_private:
        return None
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is a link-local address"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if address.is_private or not address.is_global:
        return f"{address} is a private or reserved address"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


async def check_destination(url: str, *, allow_private: bool) -> None:
    """Resolve the URL's host; every address it has must be one a webhook may reach."""
    host = urlsplit(url).hostname or ""
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError, UnicodeError):
            raise Refused(f"host {host!r} cannot be resolved") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        why = refusal(address, allow_private=allow_private)
        if why is not None:
            raise Refused(
                f"host {host!r} resolves to {why}; only public addresses are allowed"
                + ("" if allow_private else " (RUNNER_WEBHOOK_ALLOW_PRIVATE=1 lifts this)")
            )


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver with every refused address left out, so the client never connects to
    one; a host with none left fails to connect (a network error, retried later). aiohttp does
    not resolve IP literals: the delivery checks those itself (check_literal)."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [
            r
            for r in results
            if refusal(ipaddress.ip_address(r["host"].split("%")[0]), allow_private=self._allow_private)
            is None
        ]
        if not allowed:
            raise OSError(f"webhook host {host!r} resolves to no address a webhook may use")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def check_literal(url: str, *, allow_private: bool) -> None:
    """A URL whose host is an IP address: aiohttp connects to it without resolving."""
    literal = _literal(urlsplit(url).hostname or "")
    if literal is not None:
        why = refusal(literal, allow_private=allow_private)
        if why is not None:
            raise Refused(why)
