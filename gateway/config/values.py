"""Value parsers of the configuration: URLs, delivery targets, fallbacks, ciphers, paths.

Role: the values that combine the simpler kinds: ``ldap://`` and ``imaps://`` URLs,
the inbound delivery target (``DeliverTo``), a route's fallback, an OpenSSL cipher
string and a path of the configuration file, parsed by small pure functions that raise
``BadValue`` with a message a sysadmin can act on. The other value parsers live by
kind in the modules this one imports: ``gateway.config.value_errors`` (``BadValue``,
``show``), ``quantities`` (durations, sizes), ``domains`` (domains, host names, route
patterns, addresses), ``hosts`` (``host:port``, networks), ``names`` (distinguished
names, relay clients, names, logins). The TOML layer (``gateway.config.schema``) checks
TOML types first and turns ``BadValue`` into a problem line that names the key.

Decisions (also documented in ``conf/missive.toml``):

- URLs: ``ldap://host[:port]`` or ``ldaps://host[:port]`` (RFC 4516, without DN or
  filter); ``imaps://host[:port]/MAILBOX`` (RFC 5092 subset), ``imap://`` only to
  loopback (RFC 8314). A host is an IP address or a host name (``domains``). The
  MAILBOX (percent-decoded, ``INBOX`` when empty) is plain ASCII without CR, LF or NUL:
  a non-ASCII folder name is written in IMAP modified UTF-7 (RFC 3501 §5.1.3, e.g.
  ``Bo&AO4-te``); ``parse_imap_mailbox`` is also the check of the IMAP fetcher's
  ``MailboxUrl.parse``, so the configuration refuses what the fetcher would.
- Delivery targets: ``lmtp://host:port`` (default 24), ``smtp://host:port`` (25) or
  ``maildir:PATH``; a relative path is taken from the configuration's home.

Security notes: parsers never echo a whole long value back (``show`` truncates) and
never accept credentials inside URLs (they belong in 0600 files). Pure, no I/O
(``resolve_path`` only joins and normalises).
"""

from __future__ import annotations

import os.path
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit

from gateway.config.domains import parse_hostname
from gateway.config.hosts import HostPort, is_ip_address, is_loopback_host, parse_host_port
from gateway.config.names import parse_name
from gateway.config.value_errors import BadValue, show

DeliverScheme = Literal["lmtp", "smtp", "maildir"]


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
    parse_imap_mailbox(parts.path)
    return text


def parse_imap_mailbox(url_path: str) -> str:
    """The mailbox of an ``imaps://host/MAILBOX`` URL path: percent-decoded, ``INBOX``
    when empty, plain ASCII without CR, LF or NUL (a non-ASCII name is written in IMAP
    modified UTF-7, RFC 3501 §5.1.3, e.g. ``Bo&AO4-te``)."""
    mailbox = unquote(url_path.lstrip("/")) or "INBOX"
    if not mailbox.isascii() or any(ch in mailbox for ch in "\r\n\x00"):
        raise BadValue(
            "the mailbox name must be plain ASCII, without CR, LF or NUL "
            "(write a non-ASCII name in IMAP modified UTF-7, e.g. Bo&AO4-te)"
        )
    return mailbox


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
