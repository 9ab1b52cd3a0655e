"""Value parsers of the configuration: text in, typed value out (pure, no I/O).

Role: every scalar the configuration file holds (durations, sizes, ``host:port``,
networks, distinguished names, domains, addresses, URLs, delivery targets) is parsed
here, by small functions that raise ``BadValue`` with a message a sysadmin can act on.
The TOML layer (``gateway.config.schema``) checks TOML types first and turns
``BadValue`` into a problem line that names the key.

Decisions (also documented in ``conf/missive.toml``):

- Durations: one or more ``<integer><unit>`` groups, units ``s`` ``m`` ``h`` ``d``
  ``w`` (a week is 7 days), e.g. ``"30s"``, ``"4h"``, ``"1h30m"``, ``"5d"``, ``"1w"``.
  No months or years (their length varies); no bare numbers (a unit is always needed).
- Sizes: a TOML integer is bytes; a string is ``<integer>`` bytes or ``<integer><unit>``
  with decimal units ``B`` ``KB`` ``MB`` ``GB`` ``TB`` (powers of 1000, so ``"50MB"`` is
  50,000,000 bytes: RFC 1870 SIZE and Postfix's ``message_size_limit`` count bytes,
  and mail sizes are quoted in decimal units) or binary units ``KiB`` ``MiB`` ``GiB``
  ``TiB`` (powers of 1024). Units are case-insensitive.
- ``host:port``: ``192.0.2.1:25``, ``[2001:db8::1]:25`` (RFC 3986 §3.2.2 brackets),
  ``mx.example.test:25``. Where a default port exists the port may be omitted.
- Domains and host names: ASCII only, lower-cased, one trailing dot dropped, LDH labels
  of 1-63 octets, 253 octets at most (RFC 1035 §2.3.4, RFC 5890 A-labels). An
  internationalised name must be written in its A-label form (``xn--...``): the
  gateway never maps Unicode names itself, so what is configured is what is compared.
  The last label may not be all digits (RFC 3696 §2), so an IP literal is never
  mistaken for a domain.
- Mail addresses: ``local@domain``; the local part is a dot-atom (RFC 5322 §3.2.3)
  that may contain UTF-8 (RFC 6531); quoted local parts are refused. The domain is
  lower-cased; the local part is kept as written (RFC 5321 §2.4: it may be
  case-sensitive), as the development PKI does.
- Distinguished names: RFC 4514 strings. LDAP DNs (``annuaire.base_dn``) are checked
  with ldap3's parser; certificate subject DNs (``dn:...`` relay clients) become
  ``cryptography.x509.Name`` objects, attribute types matched case-insensitively.

Security notes: parsers never echo a whole long value back (``show`` truncates) and
never accept credentials inside URLs (they belong in 0600 files).
"""

from __future__ import annotations

import ipaddress
import os.path
import re
import ssl
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier
from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RelayClient = IPNetwork | x509.Name
DeliverScheme = Literal["lmtp", "smtp", "maildir"]


class BadValue(ValueError):
    """A value that cannot be used; ``str(error)`` is the sysadmin-facing reason."""


@dataclass(frozen=True, slots=True)
class HostPort:
    """A TCP endpoint: ``host`` is an IP address (IPv6 without brackets) or a name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        return is_ip_address(self.host)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


@dataclass(frozen=True, slots=True)
class DeliverTo:
    """Where inbound mail goes: ``lmtp``/``smtp`` to ``address``, or a Maildir ``path``."""

    scheme: DeliverScheme
    address: HostPort | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.scheme == "maildir":
            return f"maildir:{self.path}"
        return f"{self.scheme}://{self.address}"


def show(value: object) -> str:
    """A short, one-line rendering of a TOML value for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if hasattr(value, "isoformat"):
        return f"a date/time ({value.isoformat()})"
    return repr(value)


# ---------------------------------------------------------------- durations, sizes

_DURATION_GROUP = re.compile(r"(\d+)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``"30s"`` ``"5m"`` ``"4h"`` ``"5d"`` ``"1w"`` ``"1h30m"`` -> ``timedelta``."""
    groups = _DURATION_GROUP.findall(text)
    if not text or "".join(n + u for n, u in groups) != text:
        raise BadValue(f'expected a duration like "30s", "5m", "4h", "5d", got {show(text)}')
    seconds = sum(int(number) * _DURATION_UNITS[unit] for number, unit in groups)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise BadValue(f"duration {show(text)} is too large") from None


_SIZE = re.compile(r"(\d+)\s?([a-z]*)")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(value: str | int) -> int:
    """Bytes from an integer or ``"512KB"`` ``"50MB"`` ``"1GB"`` ``"64MiB"`` (see module doc)."""
    if isinstance(value, int):
        if value < 0:
            raise BadValue(f"a size cannot be negative, got {value}")
        return value
    match = _SIZE.fullmatch(value.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise BadValue(f'expected a size like "50MB", "512KB" or bytes, got {show(value)}')
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


# ---------------------------------------------------------------- names, addresses

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def parse_domain(text: str, *, what: str = "domain") -> str:
    """A DNS name (see module doc): lower-case A-labels, no trailing dot."""
    if not text:
        raise BadValue(f"expected a {what}, got an empty string")
    if not text.isascii():
        raise BadValue(f"{what} {show(text)} is not ASCII: write it in A-label form (xn--...)")
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BadValue(f"{show(text)} is not a valid {what} (letters, digits, '-' and dots)")
    if labels[-1].isdigit():
        raise BadValue(f"{show(text)} is not a valid {what} (the last label is all digits)")
    return name


def parse_hostname(text: str, *, fully_qualified: bool = False) -> str:
    """A host name; ``fully_qualified`` demands at least one dot (RFC 5321 §4.1.1.1 EHLO)."""
    name = parse_domain(text, what="host name")
    if fully_qualified and "." not in name:
        raise BadValue(f"{show(text)} is not a fully qualified domain name")
    return name


def parse_domain_pattern(text: str) -> str:
    """A route pattern: ``"*"`` (any domain), ``"*.x.test"`` (subdomains only), ``"x.test"``."""
    if text == "*":
        return text
    if text.startswith("*."):
        return "*." + parse_domain(text[2:])
    if "*" in text:
        raise BadValue(f'expected "*", "*.domain" or "domain", got {show(text)}')
    return parse_domain(text)


def domain_matches(pattern: str, domain: str) -> bool:
    """True if ``domain`` (already normalised) matches a normalised route ``pattern``."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return domain == pattern


def pattern_covers(earlier: str, later: str) -> bool:
    """True if every domain ``later`` matches is already matched by ``earlier``."""
    if earlier == "*":
        return True
    if not earlier.startswith("*."):
        return earlier == later
    suffix = earlier[1:]  # ".x.test"
    return later.endswith(suffix) or later == earlier


_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+")


def parse_email(text: str) -> str:
    """``local@domain`` -> the address with its domain lower-cased (see module doc)."""
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise BadValue(f"expected a mail address like name@domain, got {show(text)}")
    atoms = local.split(".")
    if not all(_ATEXT.fullmatch(atom) for atom in atoms) or len(local.encode()) > 64:
        raise BadValue(f"{show(text)} is not a valid mail address (local part)")
    return f"{local}@{parse_domain(domain)}"


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the name ``localhost`` (RFC 6761 §6.3)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_port(text: str, original: str, *, allow_zero: bool) -> int:
    if not text.isdigit() or not text.isascii():
        raise BadValue(f"expected host:port, got {show(original)} (bad port)")
    port = int(text)
    if port > 65535 or (port == 0 and not allow_zero):
        raise BadValue(f"port {port} in {show(original)} is out of range (1-65535)")
    return port


def _split_host_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise BadValue(f"expected [IPv6]:port, got {show(text)}")
        return host, rest[1:] if rest else None
    if text.count(":") > 1:
        raise BadValue(f"an IPv6 address needs brackets, e.g. [::1]:25, got {show(text)}")
    host, colon, port = text.partition(":")
    return host, port if colon else None


def parse_host_port(
    text: str,
    *,
    default_port: int | None = None,
    allow_port_zero: bool = False,
    ip_only: bool = False,
) -> HostPort:
    """``host:port`` -> ``HostPort`` (see module doc); port 0 only if ``allow_port_zero``."""
    host, port_text = _split_host_port(text.strip())
    if port_text is None:
        if default_port is None:
            raise BadValue(f"expected host:port, got {show(text)} (no port)")
        port = default_port
    else:
        port = _parse_port(port_text, text, allow_zero=allow_port_zero)
    if text.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadValue(f"{show(host)} is not an IPv6 address") from None
        return HostPort(host.lower(), port)
    if is_ip_address(host):
        return HostPort(host, port)
    if ip_only:
        raise BadValue(f"expected an IP address, got {show(host)}")
    return HostPort(parse_hostname(host), port)


def parse_network(text: str) -> IPNetwork:
    """A CIDR (``192.0.2.0/24``, ``2001:db8::/32``) or one address (``/32``, ``/128``)."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise BadValue(f"expected a network like 192.0.2.0/24, got {show(text)}: {error}") from None


# Attribute types of certificate subjects by upper-cased name (RFC 4514 §3 plus the
# usual extras); types are matched case-insensitively (RFC 4512 §2.5).
_DN_TYPES: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "COMMONNAME": NameOID.COMMON_NAME,
    "L": NameOID.LOCALITY_NAME,
    "LOCALITYNAME": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "ORGANIZATIONNAME": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "ORGANIZATIONALUNITNAME": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "COUNTRYNAME": NameOID.COUNTRY_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "E": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "GIVENNAME": NameOID.GIVEN_NAME,
    "GN": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME,
    "SURNAME": NameOID.SURNAME,
    "TITLE": NameOID.TITLE,
    "ORGANIZATIONIDENTIFIER": NameOID.ORGANIZATION_IDENTIFIER,
}
_TYPE_BEFORE_EQUALS = re.compile(r"[A-Za-z][A-Za-z0-9-]*(?=\s*=)")


def parse_ldap_dn(text: str) -> str:
    """An LDAP DN (RFC 4514), checked with ldap3's parser and returned as written."""
    if not text.strip():
        raise BadValue("expected a distinguished name, got an empty string")
    try:
        parse_dn(text)
    except LDAPInvalidDnError as error:
        raise BadValue(f"{show(text)} is not an RFC 4514 distinguished name: {error}") from None
    return text.strip()


def parse_subject_dn(text: str) -> x509.Name:
    """A certificate subject DN (RFC 4514) -> ``x509.Name``, parsed by cryptography.

    cryptography matches attribute type names case-sensitively, so every spelling the
    text uses of a known type is passed as an override (extra entries are harmless).
    """
    if not text.strip():
        raise BadValue("expected a distinguished name, got an empty string")
    overrides = {
        kind: _DN_TYPES[kind.upper()]
        for kind in _TYPE_BEFORE_EQUALS.findall(text)
        if kind.upper() in _DN_TYPES
    }
    try:
        return x509.Name.from_rfc4514_string(text.strip(), overrides)
    except ValueError:
        raise BadValue(
            f"{show(text)} is not an RFC 4514 subject DN (types: CN, O, OU, C, L, ST,"
            " DC, UID, emailAddress, serialNumber, organizationIdentifier or an OID)"
        ) from None


def parse_relay_client(text: str) -> RelayClient:
    """A relay client: a CIDR/address, or ``dn:<subject DN>`` of a client certificate."""
    if text[:3].lower() == "dn:":
        return parse_subject_dn(text[3:])
    return parse_network(text)


_ATTRIBUTE = re.compile(r"([A-Za-z][A-Za-z0-9-]*|\d+(\.\d+)+)(;[A-Za-z0-9-]+)*")


def parse_ldap_attribute(text: str) -> str:
    """An LDAP attribute description (RFC 4512 §2.5): ``mail``, ``userCertificate;binary``."""
    if not _ATTRIBUTE.fullmatch(text):
        raise BadValue(f"{show(text)} is not an LDAP attribute name")
    return text


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse_name(text: str) -> str:
    """A listener or route name: 1-64 of letters, digits, ``_ . -`` (safe in logs)."""
    if not _NAME.fullmatch(text):
        raise BadValue(f"{show(text)} is not a valid name (letters, digits, '_', '.', '-')")
    return text


def parse_login(text: str) -> str:
    """A login for a remote server: non-empty, printable, no spaces."""
    if not text or not all(c.isprintable() and not c.isspace() for c in text):
        raise BadValue(f"{show(text)} is not a valid login (printable, no spaces)")
    return text


# ---------------------------------------------------------------- URLs, targets


def _split_url(text: str, schemes: tuple[str, ...]) -> SplitResult:
    # urlsplit silently drops tabs and newlines (WHATWG): refuse them instead
    if not text.isprintable() or " " in text:
        raise BadValue(f"URL {show(text)} contains a space or a control character")
    try:
        parts = urlsplit(text)
    except ValueError as error:
        raise BadValue(f"URL {show(text)} is malformed: {error}") from None
    if parts.scheme.lower() not in schemes:
        allowed = " or ".join(f"{scheme}://" for scheme in schemes)
        raise BadValue(f"expected a URL starting with {allowed}, got {show(text)}")
    if parts.username is not None or parts.password is not None:
        raise BadValue("credentials do not belong in a URL: use the separate user and 0600 file")
    if not parts.hostname:
        raise BadValue(f"URL {show(text)} has no host")
    if parts.query or parts.fragment:
        raise BadValue(f"URL {show(text)} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - property that validates the port
    except ValueError:
        raise BadValue(f"URL {show(text)} has an invalid port") from None
    return parts


def _url_host(parts: SplitResult) -> str:
    host = parts.hostname or ""
    return host if is_ip_address(host) else parse_hostname(host)


def parse_ldap_url(text: str) -> str:
    """``ldap://host[:port]`` or ``ldaps://host[:port]`` (RFC 4516, without DN/filter)."""
    parts = _split_url(text, ("ldap", "ldaps"))
    _url_host(parts)
    if parts.path not in ("", "/"):
        raise BadValue(f"URL {show(text)}: put the DN in annuaire.base_dn, not in the URL")
    return text


def parse_imap_url(text: str) -> str:
    """``imaps://host[:port]/MAILBOX`` (RFC 5092 subset); ``imap://`` only to loopback."""
    parts = _split_url(text, ("imap", "imaps"))
    host = _url_host(parts)
    if parts.scheme.lower() == "imap" and not is_loopback_host(host):
        raise BadValue("imap:// sends the password in clear: use imaps:// (RFC 8314)")
    return text


def parse_deliver_to(text: str, home: Path) -> DeliverTo:
    """``lmtp://host:port`` (default 24), ``smtp://host:port`` (25) or ``maildir:PATH``."""
    if text.startswith("maildir:"):
        raw_path = text[len("maildir:") :]
        if not raw_path:
            raise BadValue("maildir: needs a path, e.g. maildir:var/mail")
        return DeliverTo("maildir", path=resolve_path(raw_path, home))
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("lmtp", "smtp"):
        raise BadValue(
            f"expected lmtp://host:port, smtp://host:port or maildir:PATH, got {show(text)}"
        )
    default_port = 24 if scheme == "lmtp" else 25
    address = parse_host_port(rest.removesuffix("/"), default_port=default_port)
    return DeliverTo("lmtp" if scheme == "lmtp" else "smtp", address=address)


def parse_fallback(text: str) -> str:
    """``bounce`` | ``postal`` | ``route:<name>``."""
    if text in ("bounce", "postal"):
        return text
    if text.startswith("route:"):
        return "route:" + parse_name(text[len("route:") :])
    raise BadValue(f"expected one of bounce|postal|route:<name>, got {show(text)}")


def parse_cipher_list(text: str) -> str:
    """An OpenSSL cipher string (TLS <= 1.2); empty means the library's safe default."""
    if not text:
        return text
    if not text.isascii() or not text.isprintable():
        raise BadValue(f"{show(text)} is not an OpenSSL cipher string")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(text)
    except ssl.SSLError:
        raise BadValue(f"no cipher matches {show(text)} in this OpenSSL") from None
    return text


def resolve_path(text: str, home: Path) -> Path:
    """A path from the file, absolute: relative ones are taken from ``home``."""
    if "\x00" in text:
        raise BadValue("a path cannot contain a NUL character")
    path = Path(text)
    return Path(os.path.normpath(path if path.is_absolute() else home / path))
