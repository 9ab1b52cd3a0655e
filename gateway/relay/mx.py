"""Where the relay connects: a route's static ``next_hop``, or the MX hosts of a domain.

Role: turn (route, recipient domain) into an ordered list of ``MailHost`` (name, port,
IP addresses) for the SMTP client, which tries them in order and falls through on
failure. Trust level: reads DNS only; holds no key and sends nothing.

Rules (RFC 5321 §5.1, RFC 7505):
- a static ``next_hop`` (``host:port``) is the only host: an IP is used as is, a name
  is resolved to its A/AAAA addresses (no MX lookup, as Postfix's ``[host]:port``);
- otherwise the MX records of the domain, lowest preference first; hosts of equal
  preference are shuffled (§5.1: "randomize them to spread the load"); each MX host is
  resolved to its A then AAAA addresses; a host that resolves to nothing is skipped;
- no MX record (NODATA) but the domain exists: the implicit MX, the domain itself
  (§5.1, its A/AAAA records);
- a null MX (a single MX whose exchange is ".", RFC 7505 §3) is a permanent failure
  (5.1.10, RFC 7505 §4.1); a root exchange among other MX records is ignored;
- NXDOMAIN of the recipient domain is permanent (5.1.2); no address at all for an
  existing domain is permanent too (5.4.4); timeouts, SERVFAIL and unreachable
  nameservers are temporary (4.4.3): mail waits rather than bounces on a DNS outage.

At most ``MAX_MX_HOSTS`` hosts are kept (bounded work per delivery). Port 25 for MX
hosts (RFC 5321 §4.5.4.2 / IANA); ``mx_port`` exists for tests.

Resolver: dnspython's ``dns.asyncresolver`` (never blocks the event loop), asking
``gateway.nameservers`` (``HostPort`` list) or, when that is empty, the system resolver
configuration (``/etc/resolv.conf``).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from gateway.config.hosts import HostPort
from gateway.config.model import Route
from gateway.log import get_logger

log = get_logger("relay.mx")

SMTP_PORT = 25
MAX_MX_HOSTS = 10
DNS_LIFETIME = 20.0  # seconds for one query, retries included


@dataclass(frozen=True)
class MailHost:
    """One host to try: its name (for TLS checks and logs), port and addresses."""

    name: str
    port: int
    addresses: tuple[str, ...]
    preference: int = 0


class RoutingError(Exception):
    """No host to try. ``permanent`` decides bounce (5xx) or retry (4xx)."""

    def __init__(self, text: str, *, permanent: bool, enhanced: str) -> None:
        super().__init__(text)
        self.text = text
        self.permanent = permanent
        self.enhanced = enhanced


def make_resolver(nameservers: Sequence[HostPort]) -> dns.asyncresolver.Resolver:
    """An async resolver asking ``nameservers``; empty: the system configuration."""
    if not nameservers:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(server.host, server.port) for server in nameservers
        ]
    resolver.lifetime = DNS_LIFETIME
    return resolver


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def order_mx(
    records: Sequence[tuple[int, str]], rng: random.Random | None = None
) -> list[tuple[int, str]]:
    """Sort (preference, exchange) by preference, shuffling equal preferences (§5.1)."""
    shuffler = rng or random.SystemRandom()
    groups: dict[int, list[str]] = {}
    for preference, exchange in records:
        groups.setdefault(preference, []).append(exchange)
    ordered: list[tuple[int, str]] = []
    for preference in sorted(groups):
        names = groups[preference]
        shuffler.shuffle(names)
        ordered += [(preference, name) for name in names]
    return ordered


class MxResolver:
    """Resolves routes and domains to ``MailHost`` lists (see the module docstring)."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        *,
        mx_port: int = SMTP_PORT,
        rng: random.Random | None = None,
    ) -> None:
        self._resolver = resolver
        self._mx_port = mx_port
        self._rng = rng

    async def hosts_for(self, route: Route, domain: str) -> list[MailHost]:
        """The hosts to try for ``domain`` on ``route``, in order; ``RoutingError`` if none."""
        if route.next_hop is not None:
            return [await self._static_host(route.next_hop)]
        return await self.mx_hosts(domain)

    async def _static_host(self, hop: HostPort) -> MailHost:
        if _is_ip(hop.host):
            return MailHost(hop.host, hop.port, (hop.host,))
        addresses = await self._addresses(hop.host)
        if not addresses:
            raise RoutingError(
                f"next hop {hop.host} has no address", permanent=False, enhanced="4.4.4"
            )
        return MailHost(hop.host, hop.port, addresses)

    async def mx_hosts(self, domain: str) -> list[MailHost]:
        """MX hosts of ``domain`` in order (implicit MX when there is none)."""
        records = await self._mx_records(domain)
        if records is None:  # NODATA: implicit MX (RFC 5321 §5.1)
            addresses = await self._addresses(domain)
            if not addresses:
                raise RoutingError(
                    f"{domain} has no MX and no address", permanent=True, enhanced="5.4.4"
                )
            return [MailHost(domain, self._mx_port, addresses)]
        if len(records) == 1 and records[0][1] == "":
            raise RoutingError(
                f"{domain} does not accept mail (null MX, RFC 7505)",
                permanent=True,
                enhanced="5.1.10",
            )
        hosts: list[MailHost] = []
        for preference, exchange in order_mx([r for r in records if r[1]], self._rng):
            addresses = await self._addresses(exchange)
            if addresses:
                hosts.append(MailHost(exchange, self._mx_port, addresses, preference))
            if len(hosts) >= MAX_MX_HOSTS:
                break
        if not hosts:
            raise RoutingError(
                f"no MX host of {domain} has an address", permanent=False, enhanced="4.4.4"
            )
        return hosts

    async def _mx_records(self, domain: str) -> list[tuple[int, str]] | None:
        """(preference, exchange without the final dot) or None for NODATA."""
        try:
            answer = await self._resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise RoutingError(
                f"{domain}: no such domain", permanent=True, enhanced="5.1.2"
            ) from None
        except dns.resolver.NoAnswer:
            return None
        except dns.exception.DNSException as error:
            raise _temporary(domain, "MX", error) from None
        return [(int(record.preference), _exchange(record.exchange)) for record in answer]

    async def _addresses(self, name: str) -> tuple[str, ...]:
        """A then AAAA addresses of ``name`` (empty when it has none)."""
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(name, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as error:
                raise _temporary(name, rdtype, error) from None
            found += [record.address for record in answer]
        return tuple(dict.fromkeys(found))


def _exchange(name: dns.name.Name) -> str:
    """The exchange as a lower-case name without the final dot; ``""`` for the root."""
    return "" if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def _temporary(name: str, rdtype: str, error: Exception) -> RoutingError:
    log.warning("mx.dns_failure", name=name, type=rdtype, error=type(error).__name__)
    return RoutingError(
        f"DNS lookup of {name} {rdtype} failed ({type(error).__name__})",
        permanent=False,
        enhanced="4.4.3",
    )
