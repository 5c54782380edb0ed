"""EIP-4361 "Sign-In with Ethereum": a strict message parser, its printer, and verification.

The grammar is the EIP's ABNF; URIs and authorities follow RFC 3986, times RFC 3339.
Signature recovery is eth-account's (EIP-191 personal_sign); nothing here is crypto. A
signature is always checked over the message as the wallet signed it, never over a reprint.
Contract wallets' signatures (ERC-1271, ERC-6492) are checked on chain: runner.erc6492.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

from eth_account import Account
from eth_account.messages import defunct_hash_message, encode_defunct
from eth_utils.address import is_checksum_address, to_checksum_address

# RFC 3986 building blocks.
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*"
_USERINFO = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*"
_IP_LITERAL = r"\[[^\[\]/]+\]"  # checked further by _valid_ip_literal
_HOST = rf"(?:{_IP_LITERAL}|{_REG_NAME})"
_AUTHORITY = rf"(?:{_USERINFO}@)?{_HOST}(?::[0-9]*)?"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_SEGMENT = rf"{_PCHAR}*"
_HIER_PART = (
    rf"(?://(?P<authority>{_AUTHORITY})(?:/{_SEGMENT})*"  # "//" authority path-abempty
    rf"|/(?:{_PCHAR}+(?:/{_SEGMENT})*)?"  # path-absolute
    rf"|{_PCHAR}+(?:/{_SEGMENT})*"  # path-rootless
    r"|)"  # path-empty
)
_URI = re.compile(rf"{_SCHEME}:{_HIER_PART}(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?")
_AUTHORITY_RE = re.compile(_AUTHORITY)
# [0-9], not \d: \d also takes other scripts' digits, which int() reads ('٢٠٢٦' is 2026).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)
_STATEMENT = re.compile(rf"[{_UNRESERVED}{_SUB_DELIMS}:/?#\[\]@ ]*")
_NONCE = re.compile(r"[A-Za-z0-9]{8,}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_REQUEST_ID = re.compile(rf"{_PCHAR}*")
# Hex digits in whole bytes, the 0x optional (eth-account's `hex()` leaves it out).
_SIGNATURE = re.compile(r"(?:0x)?((?:[0-9a-fA-F]{2})+)")
KEY_SIGNATURE_BYTES = 65
# Contract wallets' signatures run to thousands of hex digits (an ERC-6492 wrapper carries
# the wallet's deployment call); none comes near this.
MAX_SIGNATURE_BYTES = 64 * 1024
_MAX_CHAIN_ID_DIGITS = len(str(2**256 - 1))

HEADER_SUFFIX = " wants you to sign in with your Ethereum account:"


class SiweError(Exception):
    """A message that fails a check; `reason` names the check (the API's error code)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Reason(StrEnum):
    INVALID_MESSAGE = "invalid_message"
    INVALID_DOMAIN = "invalid_domain"
    INVALID_CHAIN = "invalid_chain"
    EXPIRED = "expired"
    INVALID_SIGNATURE = "invalid_signature"
    INVALID_NONCE = "invalid_nonce"


def _bad(message: str) -> SiweError:
    return SiweError(Reason.INVALID_MESSAGE, message)


def _valid_ip_literal(authority: str) -> bool:
    match = re.search(r"\[([^\]]*)\]", authority)
    if match is None:
        return True
    literal = match.group(1)
    if literal[:1] in ("v", "V"):  # IPvFuture
        return re.fullmatch(rf"[vV][0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+", literal) is not None
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    return True


def is_uri(text: str) -> bool:
    match = _URI.fullmatch(text)
    if match is None:
        return False
    authority = match.group("authority")
    return authority is None or _valid_ip_literal(authority)


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time, as an aware datetime; a date that does not exist is refused."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    frac, zone = match.group(7), match.group(8)
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    if zone in ("Z", "z"):
        offset = timedelta(0)
    else:
        sign = 1 if zone[0] == "+" else -1
        offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))


@dataclass(frozen=True, slots=True)
class SiweMessage:
    domain: str
    address: str  # EIP-55 checksummed, whatever case the message wrote it in
    uri: str
    version: str
    chain_id: int
    nonce: str
    issued_at: str
    statement: str | None = None
    scheme: str | None = None
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: tuple[str, ...] | None = None
    _times: dict[str, datetime] = field(default_factory=dict, compare=False, repr=False)
    # The text as sent, when parsed: what the wallet signed (an address in lower case or a
    # chain id with leading zeros reprints differently).
    _text: str | None = field(default=None, compare=False, repr=False)

    def signed_text(self) -> str:
        """What the wallet signed: the text parsed, else (a message built here) its print."""
        return self._text if self._text is not None else self.to_text()

    def to_text(self) -> str:
        """The message in EIP-4361 form: what the wallet signs."""
        prefix = f"{self.scheme}://{self.domain}" if self.scheme else self.domain
        lines = [prefix + HEADER_SUFFIX, self.address, ""]
        if self.statement is not None:
            lines += [self.statement, ""]
        else:
            lines += [""]
        lines += [
            f"URI: {self.uri}",
            f"Version: {self.version}",
            f"Chain ID: {self.chain_id}",
            f"Nonce: {self.nonce}",
            f"Issued At: {self.issued_at}",
        ]
        if self.expiration_time is not None:
            lines.append(f"Expiration Time: {self.expiration_time}")
        if self.not_before is not None:
            lines.append(f"Not Before: {self.not_before}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources is not None:
            lines.append("Resources:")
            lines += [f"- {r}" for r in self.resources]
        return "\n".join(lines)

    def fields(self) -> dict[str, object]:
        """The message's fields under the EIP's (camelCase) names; absent ones are None."""
        return {
            "scheme": self.scheme,
            "domain": self.domain,
            "address": self.address,
            "statement": self.statement,
            "uri": self.uri,
            "version": self.version,
            "chainId": self.chain_id,
            "nonce": self.nonce,
            "issuedAt": self.issued_at,
            "expirationTime": self.expiration_time,
            "notBefore": self.not_before,
            "requestId": self.request_id,
            "resources": list(self.resources) if self.resources is not None else None,
        }

    def time(self, name: str) -> datetime | None:
        return self._times.get(name)

    @property
    def host(self) -> str:
        """The domain as host[:port], lower case (userinfo dropped; check() refuses it)."""
        return self.domain.rsplit("@", 1)[-1].lower()


class _Lines:
    """The message's lines, read in order: each field is one line, taken by its prefix."""

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.pos = 0

    def at(self, prefix: str) -> bool:
        return self.pos < len(self.lines) and self.lines[self.pos].startswith(prefix)

    def take(self, prefix: str, what: str) -> str:
        if not self.at(prefix):
            raise _bad(f"expected the {what} line ({prefix!r}) at line {self.pos + 1}")
        value = self.lines[self.pos][len(prefix) :]
        self.pos += 1
        return value

    def blank(self, after: str) -> None:
        if self.take("", "blank") != "":
            raise _bad(f"expected a blank line after the {after}")


def parse(text: str) -> SiweMessage:
    """Parse an EIP-4361 message strictly; anything off raises SiweError(invalid_message)."""
    lines = _Lines(text)
    scheme, origin = _origin(lines.take("", "header"))
    address = _address(lines.take("", "address"))
    lines.blank("address")
    statement = _statement(lines)
    uri = lines.take("URI: ", "URI")
    if not is_uri(uri):
        raise _bad("the URI is not an RFC 3986 URI")
    if lines.take("Version: ", "Version") != "1":
        raise _bad("the version must be 1")
    chain_id = _chain_id(lines.take("Chain ID: ", "Chain ID"))
    nonce = lines.take("Nonce: ", "Nonce")
    if not _NONCE.fullmatch(nonce):
        raise _bad("the nonce must be at least 8 letters or digits")
    times: dict[str, datetime] = {}
    issued_at = _timestamp(lines, "Issued At: ", "issued_at", times)
    optional = _optional_fields(lines, times)
    resources = _resources(lines)
    if lines.pos != len(lines.lines):
        raise _bad(f"unexpected content at line {lines.pos + 1}")
    return SiweMessage(
        domain=origin,
        address=to_checksum_address(address),
        uri=uri,
        version="1",
        chain_id=chain_id,
        nonce=nonce,
        issued_at=issued_at,
        statement=statement,
        scheme=scheme,
        resources=resources,
        _times=times,
        _text=text,
        **optional,
    )


def _origin(header: str) -> tuple[str | None, str]:
    """The header line's scheme (if any) and domain (an RFC 3986 authority)."""
    if not header.endswith(HEADER_SUFFIX):
        raise _bad("the first line must end with" + HEADER_SUFFIX)
    origin = header[: -len(HEADER_SUFFIX)]
    scheme = None
    match = re.fullmatch(rf"({_SCHEME})://(.*)", origin)
    if match:
        scheme, origin = match.group(1), match.group(2)
    if not origin or not _AUTHORITY_RE.fullmatch(origin) or not _valid_ip_literal(origin):
        raise _bad("the domain is not an RFC 3986 authority")
    host = origin.rsplit("@", 1)[-1]
    if not host.startswith("[") and not host.split(":")[0]:
        raise _bad("the domain has no host")
    return scheme, origin


def _address(address: str) -> str:
    if not _ADDRESS.fullmatch(address):
        raise _bad("the address is not 0x and 40 hex digits")
    digits = address[2:]
    # EIP-4361: the address SHOULD be EIP-55; wallets' one-click flows send it in one case,
    # which carries no checksum. Mixed case is a checksum, and it must hold.
    if digits not in (digits.lower(), digits.upper()) and not is_checksum_address(address):
        raise _bad("the address is in mixed case but its EIP-55 checksum is wrong")
    return address


def _statement(lines: _Lines) -> str | None:
    """The optional statement: its line and a blank one, or one blank line for none."""
    statement = lines.take("", "statement")
    if statement == "":
        return None
    if not _STATEMENT.fullmatch(statement):
        raise _bad("the statement has characters EIP-4361 does not allow")
    lines.blank("statement")
    return statement


def _chain_id(chain: str) -> int:
    if not re.fullmatch(r"[0-9]+", chain):
        raise _bad("the chain id must be a number")
    # A chain id is a uint256 (EIP-155, the CHAINID opcode): at most 78 digits. Bounding the
    # length first also keeps int() within its 4,300-digit limit (a ValueError otherwise).
    if len(chain) > _MAX_CHAIN_ID_DIGITS or int(chain) >= 2**256:
        raise _bad("the chain id is larger than any chain's (a chain id fits in 256 bits)")
    return int(chain)


def _timestamp(lines: _Lines, prefix: str, key: str, times: dict[str, datetime]) -> str:
    """A time field's text, its parsed value recorded in `times` under `key`."""
    value = lines.take(prefix, prefix.rstrip(": "))
    try:
        times[key] = parse_time(value)
    except ValueError as exc:
        raise _bad(f"{prefix.rstrip(': ')}: {exc}") from None
    return value


def _optional_fields(lines: _Lines, times: dict[str, datetime]) -> dict[str, str | None]:
    """Expiration Time, Not Before and Request ID, each optional, in that order."""
    optional: dict[str, str | None] = {"expiration_time": None, "not_before": None, "request_id": None}
    if lines.at("Expiration Time: "):
        optional["expiration_time"] = _timestamp(lines, "Expiration Time: ", "expiration_time", times)
    if lines.at("Not Before: "):
        optional["not_before"] = _timestamp(lines, "Not Before: ", "not_before", times)
    if lines.at("Request ID: "):
        request_id = lines.take("Request ID: ", "Request ID")
        if not _REQUEST_ID.fullmatch(request_id):
            raise _bad("the request id has characters EIP-4361 does not allow")
        optional["request_id"] = request_id
    return optional


def _resources(lines: _Lines) -> tuple[str, ...] | None:
    """The optional "Resources:" line and the "- uri" lines under it."""
    if not (lines.at("Resources:") and lines.lines[lines.pos] == "Resources:"):
        return None
    lines.pos += 1
    found: list[str] = []
    while lines.at("- "):
        resource = lines.take("- ", "resource")
        if not is_uri(resource):
            raise _bad(f"resource {len(found) + 1} is not an RFC 3986 URI")
        found.append(resource)
    return tuple(found)


def check(
    message: SiweMessage,
    signature: str,
    *,
    domains: frozenset[str],
    chain_ids: frozenset[int] | None,
    now: datetime | None = None,
    future_skew: timedelta | None = timedelta(seconds=60),
) -> None:
    """Every check after parsing, with a key's signature only (the service adds contract
    wallets': api.auth)."""
    check_claims(message, domains=domains, chain_ids=chain_ids, now=now, future_skew=future_skew)
    if not signed_by_key(message, signature_bytes(signature)):
        raise SiweError(Reason.INVALID_SIGNATURE, f"the signature is not {message.address}'s")


def check_claims(
    message: SiweMessage,
    *,
    domains: frozenset[str],
    chain_ids: frozenset[int] | None,
    now: datetime | None = None,
    future_skew: timedelta | None = timedelta(seconds=60),
) -> None:
    """The checks before the signature, in the order docs/api.md gives: domain, chain, time.

    `future_skew` is how far Issued At may lie ahead of `now`. The EIP itself has no such
    rule; the service does (60 s). None turns it off, to check a message by the EIP alone.
    """
    if "@" in message.domain:
        # Wallets show the domain as written: "phish.example@portal" reads as phish.example to
        # a person, and as host "portal" to a parser. The EIP allows userinfo; we never do.
        raise SiweError(
            Reason.INVALID_DOMAIN,
            f"the message's domain {message.domain!r} has userinfo (a name before '@'); "
            "name the host[:port] alone",
        )
    if message.host not in domains:
        raise SiweError(
            Reason.INVALID_DOMAIN,
            f"the message names domain {message.domain!r}; this service accepts "
            f"{', '.join(sorted(domains))} (RUNNER_SIWE_DOMAIN: the portal's host[:port], "
            "and the API's for the CLI)",
        )
    if chain_ids is not None and message.chain_id not in chain_ids:
        raise SiweError(Reason.INVALID_CHAIN, f"chain id {message.chain_id} is not accepted")
    now = now or datetime.now(UTC)
    issued_at = message.time("issued_at")
    expiration = message.time("expiration_time")
    not_before = message.time("not_before")
    if future_skew is not None and issued_at is not None and issued_at > now + future_skew:
        raise SiweError(Reason.EXPIRED, "the message is issued in the future")
    if expiration is not None and expiration <= now:
        raise SiweError(Reason.EXPIRED, "the message has expired")
    if not_before is not None and not_before > now:
        raise SiweError(Reason.EXPIRED, "the message is not yet valid")


def signature_bytes(signature: str) -> bytes:
    """The signature's bytes; text that cannot be any wallet's signature is `malformed`."""
    match = _SIGNATURE.fullmatch(signature)
    if match is None or len(match.group(1)) > 2 * MAX_SIGNATURE_BYTES:
        raise SiweError(
            Reason.INVALID_SIGNATURE,
            "the signature is malformed: expected hex digits in whole bytes (0x optional), "
            f"at most {MAX_SIGNATURE_BYTES} bytes",
        )
    return bytes.fromhex(match.group(1))


def signed_hash(message: SiweMessage) -> bytes:
    """The EIP-191 personal_sign hash of the message as sent: what a contract wallet signs."""
    return bytes(defunct_hash_message(text=message.signed_text()))


def signed_by_key(message: SiweMessage, signature: bytes) -> bool:
    """Whether `signature` is a 65-byte key signature of the message by its address."""
    return (
        len(signature) == KEY_SIGNATURE_BYTES and recover(message.signed_text(), signature) == message.address
    )


def recover(text: str, signature: bytes) -> str | None:
    """The address that signed `text` (EIP-191 personal_sign), or None for a bad signature."""
    if len(signature) != KEY_SIGNATURE_BYTES:
        return None
    try:
        address: str = Account.recover_message(encode_defunct(text=text), signature=signature)
    except Exception:  # eth-keys raises several types for an unrecoverable signature
        return None
    return address
