"""TLS for the relay's client side: the SSL context and the check of the peer's identity.

Role: ``client_context`` builds the context STARTTLS uses toward a next hop, and
``PeerVerifier.verify`` decides, after the handshake, whether the peer may receive the
message. Trust level: loads the gateway's TLS certificate and key (``[tls]``), which it
presents as client certificate (RFC 3207; peers of a trust space ask for it); no
signing or decryption key.

Route ``tls`` modes (CONFIG-CONTRACT ``[[routes]] tls``):
- ``verify``: OpenSSL checks the chain during the handshake against ``[trust] anchors``
  + ``intermediates`` + the route's own ``anchors`` (``CERT_REQUIRED``; a peer with no
  path fails the handshake), then our ``CertificateValidator`` (RFC 5280 path with the
  certificates the peer sent as untrusted intermediates, key usage, EKU serverAuth,
  revocation by CRL/OCSP per ``[trust] revocation``) decides, and the reference name —
  the route's ``tls_name``, else the MX host name or the ``next_hop`` host — must match
  the validated leaf (RFC 6125 §6.4: DNS-ID in subjectAltName dNSName, case-insensitive,
  a wildcard only as the whole left-most label; an IP reference only against iPAddress
  entries; never the subject CN). The name check is cryptography's server verifier
  (RFC 6125/CA-B Forum matching, Rust) run on the chain the validator built, not hand
  code. For ``security = "tls-only"`` routes the leaf's subject DN must also be the
  *liste blanche* entry of every recipient domain (``ListeBlanche.allows``); no liste
  blanche configured means refused (fail closed).
- ``opportunistic``: encrypt when the peer offers STARTTLS, accept any certificate
  (RFC 7435); the peer's DN is recorded, not trusted.
- ``none``: no STARTTLS at all (the config rules allow it only where they allow it).

Decisions: TLS >= ``tls.min_version`` (1.2 default, RFC 8996); ``tls.ciphers`` for TLS
1.2; compression off (CRIME, RFC 7457 §2.6); the SNI is the reference name unless it is
an IP address (RFC 6066 §3). OpenSSL's own host name check is off because ours runs on
the validated leaf. Validation may fetch CRLs or OCSP: it runs in a worker thread.
Python 3.11 exposes the peer's whole chain only through ``SSLObject._sslobj``
(``get_unverified_chain``, public since 3.13); without it only the leaf is known and
the configured intermediates must complete the path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from gateway.config.model import Route, TlsSection, TrustSection
from gateway.errors import ConfigError
from gateway.relay.route_trust import RouteTrust
from gateway.smime.types import Purpose, ValidationResult
from gateway.smime.validate import CertificateValidator
from gateway.smtp.listeblanche import ListeBlanche

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsVerificationError(Exception):
    """The peer's certificate is not acceptable for this route (safe to log)."""


@dataclass(frozen=True)
class PeerIdentity:
    """What the handshake showed: recorded in the delivery result and the audit."""

    tls_version: str | None
    cipher: str | None
    certificate: x509.Certificate | None
    verified: bool  # True only after ``verify`` mode checks passed

    @property
    def dn(self) -> str | None:
        return self.certificate.subject.rfc4514_string() if self.certificate else None

    @property
    def serial(self) -> str | None:
        return format(self.certificate.serial_number, "x") if self.certificate else None


def client_context(
    tls: TlsSection, trust: TrustSection, *, verify: bool, route_anchors: Iterable[Path] = ()
) -> ssl.SSLContext:
    """The SSL context for STARTTLS on one route (``verify`` or opportunistic)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_COMPRESSION
    if tls.ciphers:
        context.set_ciphers(tls.ciphers)
    if tls.certificate is not None and tls.private_key is not None:
        try:
            context.load_cert_chain(str(tls.certificate), str(tls.private_key))
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"{tls.certificate}: cannot load TLS certificate/key: {error}"
            ) from None
    context.check_hostname = False  # ours, on the validated leaf (module docstring)
    if not verify:
        context.verify_mode = ssl.CERT_NONE
        return context
    context.verify_mode = ssl.CERT_REQUIRED
    for path in (*trust.anchors, *trust.intermediates, *route_anchors):
        try:
            context.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"{path}: cannot load trust file: {error}") from None
    return context


def server_name_indication(reference: str) -> str | None:
    """The SNI to send: the reference name, none for an IP address (RFC 6066 §3)."""
    return None if _as_ip(reference) is not None else reference


def peer_chain(ssl_object: ssl.SSLObject) -> list[x509.Certificate]:
    """The certificates the peer sent, leaf first (only the leaf on other Pythons)."""
    inner = getattr(ssl_object, "_sslobj", None)
    get_chain = getattr(inner, "get_unverified_chain", None)
    if get_chain is not None:
        raw = get_chain() or []
        return [x509.load_der_x509_certificate(c.public_bytes(ssl._ssl.ENCODING_DER)) for c in raw]  # type: ignore[attr-defined]
    der = ssl_object.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(der)] if der else []


def handshake_facts(ssl_object: ssl.SSLObject | None) -> PeerIdentity:
    """Version, cipher and leaf of a finished handshake (nothing verified yet)."""
    if ssl_object is None:
        return PeerIdentity(None, None, None, verified=False)
    cipher = ssl_object.cipher()
    chain = peer_chain(ssl_object)
    return PeerIdentity(
        ssl_object.version(), cipher[0] if cipher else None, chain[0] if chain else None, False
    )


class PeerVerifier:
    """Decides whether a verified-TLS peer is the right one (see the module docstring)."""

    def __init__(
        self, validator: CertificateValidator, liste_blanche: ListeBlanche | None = None
    ) -> None:
        self._trust = RouteTrust(validator)
        self._liste_blanche = liste_blanche

    def validator_for(self, route: Route) -> CertificateValidator:
        """The validator with the route's own anchors added (``RouteTrust``)."""
        return self._trust.validator_for(route)

    async def verify(self, ssl_object: ssl.SSLObject, route: Route, reference: str) -> PeerIdentity:
        """Validate the peer chain and name; ``TlsVerificationError`` if refused."""
        facts = handshake_facts(ssl_object)
        chain = peer_chain(ssl_object)
        if not chain:
            raise TlsVerificationError("the peer sent no certificate")
        validator = await asyncio.to_thread(self.validator_for, route)
        result = await asyncio.to_thread(
            validator.validate, chain[0], chain[1:], Purpose.TLS_SERVER
        )
        if not result.valid:
            raise TlsVerificationError(f"peer certificate {result.status.value}: {result.reason}")
        check_reference_name(result, reference)
        return PeerIdentity(facts.tls_version, facts.cipher, chain[0], verified=True)

    def check_liste_blanche(self, certificate: x509.Certificate, domains: Sequence[str]) -> None:
        """``tls-only`` routes: the peer DN must be listed for every recipient domain."""
        if self._liste_blanche is None:
            raise TlsVerificationError("tls-only route but no liste blanche configured")
        for domain in domains:
            if not self._liste_blanche.allows(domain, certificate.subject):
                raise TlsVerificationError(
                    f"peer DN {certificate.subject.rfc4514_string()} is not the "
                    f"liste blanche entry of {domain}"
                )


def _as_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def check_reference_name(result: ValidationResult, reference: str) -> None:
    """RFC 6125 name check of the validated leaf against ``reference`` (see docstring)."""
    chain = result.chain
    if len(chain) < 1:
        raise TlsVerificationError("no validated chain to check the name against")
    ip = _as_ip(reference)
    subject: x509.GeneralName = x509.IPAddress(ip) if ip is not None else x509.DNSName(reference)
    ca_policy = ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, Criticality.AGNOSTIC, None
    )
    ee_policy = ExtensionPolicy.permit_all().require_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    try:
        verifier = (
            PolicyBuilder()
            .store(Store([chain[-1]]))
            .time(datetime.now(UTC))
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
            .build_server_verifier(subject)  # type: ignore[arg-type]
        )
        verifier.verify(chain[0], list(chain[1:-1]))
    except (VerificationError, ValueError) as error:
        raise TlsVerificationError(
            f"peer certificate does not match the name {reference} ({error})"
        ) from None
