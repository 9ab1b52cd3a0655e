"""The signer's certificates of an S/MIME SignedData (RFC 5652 §5.1, §5.3; RFC 5035 §5.4).

Role: the X.509 certificates a SignedData carries, parsed once (``Certificates``), the
one a SignerInfo names found by its sid (issuerAndSerialNumber or subjectKeyIdentifier,
RFC 5652 §5.3), the others offered to the chain validator as untrusted intermediates,
and the hash of the signer certificate that an ESS signingCertificate(V2) attribute
(RFC 5035 §5.4) is compared with. ``gateway.smime.signature_check`` and
``gateway.smime.verify`` use it; it imports neither.

Invariants: work is bounded: at most ``MAX_CERTIFICATES`` (100) certificates are looked
at. A certificate that does not parse (or has a serial number <= 0, RFC 5280 §4.1.2.2)
is skipped, so its signer will not match.

Caches (issue 7 Speed: a correspondent sends the same chain and attributes with every
message): the certificates of a message are kept parsed per encoding of the whole
certificates field (``CERTIFICATE_CACHE_SIZE`` fields of at most
``MAX_CACHED_CERTIFICATES`` octets, least recently used first: hostile fields cannot
fill memory; measured, 256 fields of 32 KiB of small certificates pinned 45 MiB, so the
bound is 64 fields of 16 KiB, about 6 MiB per worker at worst, while a real chain of 2
to 4 RSA certificates is under 8 KiB). Each entry is a ``KnownCertificate``: the
certificate, its DER as received (so a full cache holds at most 1 MiB more) and what is
read of it, each read once on first use (issuer DER, serial number, IssuerAndSerialNumber,
subjectKeyIdentifier, mail addresses, the ESS hash of its DER per algorithm), so the
entries of a cached field carry those from one message to the next, bounded with them.
Each cached value is a function of those exact octets alone and a miss runs the same
code, so a cache never accepts what the uncached path refuses; nothing that depends on
time or revocation is cached here (the validator's own cache handles that).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509

from gateway.smime import der
from gateway.smime.certnames import certificate_addresses

MAX_CERTIFICATES = 100
CERTIFICATE_CACHE_SIZE = 64  # certificate fields kept parsed (and ESS hashes kept)
MAX_CACHED_CERTIFICATES = 16 * 1024  # octets of a certificates field worth keeping


class KnownCertificate:
    """One certificate of a SignedData with what is read of it, each read once on first
    use: every value is a function of the certificate alone (never of time or trust)."""

    def __init__(self, certificate: x509.Certificate, encoded: bytes) -> None:
        self.certificate = certificate
        self.encoded = encoded  # its DER, exactly as received
        self._digests: dict[str, bytes] = {}

    def digest(self, algorithm: str) -> bytes:
        """The ``algorithm`` (hashlib name) hash of its DER, for ESS (RFC 5035 §5.4)."""
        found = self._digests.get(algorithm)
        if found is None:
            found = self._digests[algorithm] = hashlib.new(algorithm, self.encoded).digest()
        return found

    @functools.cached_property
    def issuer_der(self) -> bytes:
        return self.certificate.issuer.public_bytes()

    @functools.cached_property
    def serial_number(self) -> int:
        return self.certificate.serial_number

    @functools.cached_property
    def issuer_and_serial(self) -> bytes:
        """The DER IssuerAndSerialNumber naming this certificate (RFC 5652 §10.2.4)."""
        return der.sequence(self.issuer_der, der.integer(self.serial_number))

    @functools.cached_property
    def key_identifier(self) -> bytes | None:
        """The subjectKeyIdentifier, None when absent or unreadable."""
        try:
            extension = self.certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            )
        except (x509.ExtensionNotFound, ValueError):
            return None
        return extension.value.digest

    @functools.cached_property
    def addresses(self) -> tuple[str, ...]:
        """``certnames.certificate_addresses``: what a From address is bound to."""
        return certificate_addresses(self.certificate)


@dataclass
class Certificates:
    """The SignedData certificates (X.509 ones; other choices are skipped)."""

    known: tuple[KnownCertificate, ...] = ()

    @classmethod
    def from_signed_data(cls, signed_data: cms.SignedData) -> Certificates:
        choices = signed_data["certificates"]
        if isinstance(choices, core.Void):
            return cls()
        return cls(_CERTIFICATE_SETS.certificates(choices))

    @property
    def entries(self) -> list[x509.Certificate]:
        return [entry.certificate for entry in self.known]

    def find(self, sid: cms.SignerIdentifier) -> KnownCertificate | None:
        """The first entry that ``sid`` names (RFC 5652 §5.3)."""
        kind = sid.name
        if kind == "issuer_and_serial_number":
            wanted = sid.chosen
            encoded = wanted.dump()
            for entry in self.known:
                if entry.issuer_and_serial == encoded or _names(entry, wanted):
                    return entry
        elif kind == "subject_key_identifier":
            key_identifier = sid.chosen.native
            for entry in self.known:
                if entry.key_identifier is not None and entry.key_identifier == key_identifier:
                    return entry
        return None

    def others(self, certificate: x509.Certificate) -> list[x509.Certificate]:
        """The entries other than ``certificate`` (compared by DER)."""
        return [entry.certificate for entry in self.known if entry.certificate != certificate]


def _usable_certificates(choices: cms.CertificateSet) -> tuple[KnownCertificate, ...]:
    """The X.509 certificates among the first ``MAX_CERTIFICATES`` choices."""
    found: list[KnownCertificate] = []
    for index, choice in enumerate(choices):
        if index >= MAX_CERTIFICATES:
            break
        if choice.name != "certificate":
            continue
        encoded = bytes(choice.chosen.dump())
        certificate = _load_certificate(encoded)
        if certificate is not None:
            found.append(KnownCertificate(certificate, encoded))
    return tuple(found)


class _CertificateSetCache:
    """``_usable_certificates`` per encoding of the whole certificates field: a
    correspondent sends the same chain with every message, and the result depends on
    those octets alone (a miss runs the same code on the message's own parse; nothing
    is cached when it raises). Least recently used entries go first; thread-safe."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[KnownCertificate, ...]] = OrderedDict()

    def certificates(self, choices: cms.CertificateSet) -> tuple[KnownCertificate, ...]:
        """The usable certificates: a field over ``MAX_CACHED_CERTIFICATES`` octets is
        read each time, so that hostile ones cannot fill memory."""
        key = bytes(choices.dump())
        if len(key) > MAX_CACHED_CERTIFICATES:
            return _usable_certificates(choices)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        found = _usable_certificates(choices)
        with self._lock:
            self._entries[key] = found
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return found


_CERTIFICATE_SETS = _CertificateSetCache(CERTIFICATE_CACHE_SIZE)


def _load_certificate(encoded: bytes) -> x509.Certificate | None:
    """The certificate of these exact DER octets, None when it is unusable."""
    try:
        tbs = asn1_x509.Certificate.load(encoded)["tbs_certificate"]
        if tbs["serial_number"].native <= 0:
            return None  # RFC 5280 §4.1.2.2; cryptography would warn, then refuse
        return x509.load_der_x509_certificate(encoded)
    except (ValueError, TypeError, KeyError, x509.InvalidVersion):
        return None  # an unparsable certificate is skipped; its signer will not match


def _names(entry: KnownCertificate, wanted: cms.IssuerAndSerialNumber) -> bool:
    """RFC 5652 §5.3, when the IssuerAndSerialNumber octets differ from the entry's own:
    the same serial number and an issuer of the same encoding, or equal as RFC 5280 §7.1
    compares names when their encodings differ."""
    if entry.serial_number != wanted["serial_number"].native:
        return False
    issuer = wanted["issuer"]
    return entry.issuer_der == issuer.dump() or bool(
        asn1_x509.Name.load(entry.issuer_der) == issuer
    )
