"""DNS CERT discovery of S/MIME certificates (RFC 4398), as Direct publishes them.

Role: the optional third source of the certificate lookup (``[annuaire] dns_cert``):
CERT records of type PKIX (RFC 4398 §2.1, value 1: an X.509 certificate in DER) at
names derived from the recipient's address. Returns DER bytes; validating them is the
lookup's job. No private data is involved; the answer is public.

Names, in this order:
1. the address-bound form, RFC 4398 §3.3: the local part becomes *one* label in front
   of the domain (``john.smith@chu-a.test`` -> the label ``john.smith``, written
   ``john\\.smith.chu-a.test.``);
2. when the local part has a dot, the form the Direct Project reference implementation
   queries (the ``@`` replaced by a dot: ``john.smith.chu-a.test.``);
3. the domain-bound form: the domain itself (``chu-a.test.``), asked by the lookup only
   after the address forms found nothing usable.

Transport: ``dns.asyncresolver`` (dnspython) on the event loop, with the configured
``[gateway] nameservers`` (host:port) or the system resolver; a UDP answer truncated
because a certificate does not fit (RFC 1035 §4.2.1: the TC bit) is asked again over
TCP by dnspython itself (RFC 7766 §5). Other CERT types (PGP, URL forms such as IPKIX)
are ignored: fetching a URL named by DNS data is not done.

Failures: a name that does not exist (NXDOMAIN) or has no CERT record is "nothing
found"; a timeout or servers failing (SERVFAIL, refused) raise ``DirectoryUnavailable``
so the message waits instead of being treated as having no certificate.
"""

from __future__ import annotations

from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.CERT import CERT

from annuaire.errors import DirectoryUnavailable
from gateway.config import HostPort

CERT_TYPE_PKIX = 1  # RFC 4398 §2.1


def address_names(address: str) -> list[dns.name.Name]:
    """The address-bound owner names of ``address`` (see the module docstring)."""
    local, _, domain = address.rpartition("@")
    names: list[dns.name.Name] = []
    try:
        origin = dns.name.from_text(domain)
        names.append(dns.name.Name((local.encode("utf-8"), *origin.labels)))
        if "." in local:
            direct = dns.name.from_text(f"{local}.{domain}")
            if direct not in names:
                names.append(direct)
    except (dns.exception.DNSException, UnicodeError):
        pass  # a label too long or a name too long: no DNS form for this address
    return names


def domain_name(domain: str) -> dns.name.Name | None:
    try:
        return dns.name.from_text(domain)
    except (dns.exception.DNSException, UnicodeError):
        return None


class DnsCertFinder:
    """Ask DNS for PKIX CERT records (see the module docstring)."""

    def __init__(
        self,
        nameservers: Sequence[HostPort] = (),
        *,
        timeout: float = 5.0,
        resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        if resolver is None:
            resolver = dns.asyncresolver.Resolver(configure=not nameservers)
            if nameservers:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(server.host, server.port)
                    for server in nameservers
                ]
        resolver.lifetime = timeout
        self._resolver = resolver

    async def certificates(self, name: dns.name.Name) -> list[bytes]:
        """DER of every PKIX CERT record at ``name`` (empty when there is none)."""
        try:
            answer = await self._resolver.resolve(
                name, dns.rdatatype.CERT, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as error:
            raise DirectoryUnavailable(
                f"DNS CERT lookup of {name.to_text()} failed: {type(error).__name__}"
            ) from None
        if answer.rrset is None:
            return []
        return [
            rdata.certificate
            for rdata in answer.rrset
            if isinstance(rdata, CERT) and rdata.certificate_type == CERT_TYPE_PKIX
        ]
