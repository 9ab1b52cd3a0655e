"""Value parsers of the configuration: IP addresses, ``host:port`` and networks.

Role: ``HostPort`` (a TCP endpoint) and the parsers of ``host:port`` values and CIDR
networks, raising ``BadValue`` (``gateway.config.value_errors``) with a message a
sysadmin can act on; host names are checked by ``gateway.config.domains``.

Decisions (also documented in ``conf/missive.toml``):

- ``host:port``: ``192.0.2.1:25``, ``[2001:db8::1]:25`` (RFC 3986 §3.2.2 brackets),
  ``mx.example.test:25``. Where a default port exists the port may be omitted.
- Loopback: 127.0.0.0/8, ``::1`` and the name ``localhost`` (RFC 6761 §6.3).

Security notes: a bad value is never echoed whole (``show`` truncates it). Pure, no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.config.domains import parse_hostname
from gateway.config.value_errors import BadValue, show

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    if not text.isdigit() or not text.isascii() or len(text) > 5:
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
