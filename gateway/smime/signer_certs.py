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
to 4 RSA certificates is under 8 KiB) and, for those, the ESS hash of the signer
certificate per certificate (its whole DER). Each cached value is a function of those
exact octets alone and a miss runs the uncached code, so a cache never accepts what the
uncached path refuses; nothing that depends on time or revocation is cached here (the
validator's own cache handles that).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

MAX_CERTIFICATES = 100
CERTIFICATE_CACHE_SIZE = 64  # certificate fields kept parsed (and ESS hashes kept)
MAX_CACHED_CERTIFICATES = 16 * 1024  # octets of a certificates field worth keeping


@dataclass
class Certificates:
    """The SignedData certificates (X.509 ones; other choices are skipped)."""

    entries: list[x509.Certificate] = field(default_factory=list)
    cached: bool = False  # the entries are kept by the certificate set cache

    @classmethod
    def from_signed_data(cls, signed_data: cms.SignedData) -> Certificates:
        choices = signed_data["certificates"]
        if isinstance(choices, core.Void):
            return cls()
        entries, cached = _CERTIFICATE_SETS.certificates(choices)
        return cls(list(entries), cached)

    def hash_of(self, certificate: x509.Certificate, algorithm: str) -> bytes:
        """The hash of an entry's DER (kept with the entries when they are cached)."""
        if self.cached:
            return _cached_certificate_hash(certificate, algorithm)
        return _certificate_hash(certificate, algorithm)

    def find(self, sid: cms.SignerIdentifier) -> x509.Certificate | None:
        for certificate in self.entries:
            if _matches_sid(certificate, sid):
                return certificate
        return None

    def others(self, certificate: x509.Certificate) -> list[x509.Certificate]:
        return [cert for cert in self.entries if cert != certificate]


def _usable_certificates(choices: cms.CertificateSet) -> tuple[x509.Certificate, ...]:
    """The X.509 certificates among the first ``MAX_CERTIFICATES`` choices."""
    found: list[x509.Certificate] = []
    for index, choice in enumerate(choices):
        if index >= MAX_CERTIFICATES:
            break
        if choice.name != "certificate":
            continue
        certificate = _load_certificate(bytes(choice.chosen.dump()))
        if certificate is not None:
            found.append(certificate)
    return tuple(found)


class _CertificateSetCache:
    """``_usable_certificates`` per encoding of the whole certificates field: a
    correspondent sends the same chain with every message, and the result depends on
    those octets alone (a miss runs the same code on the message's own parse; nothing
    is cached when it raises). Least recently used entries go first; thread-safe."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[x509.Certificate, ...]] = OrderedDict()

    def certificates(
        self, choices: cms.CertificateSet
    ) -> tuple[tuple[x509.Certificate, ...], bool]:
        """(the usable certificates, whether they are kept in the cache): a field over
        ``MAX_CACHED_CERTIFICATES`` octets is read each time, so that hostile ones
        cannot fill memory."""
        key = bytes(choices.dump())
        if len(key) > MAX_CACHED_CERTIFICATES:
            return _usable_certificates(choices), False
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found, True
        found = _usable_certificates(choices)
        with self._lock:
            self._entries[key] = found
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return found, True


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


def _matches_sid(certificate: x509.Certificate, sid: cms.SignerIdentifier) -> bool:
    """RFC 5652 §5.3: issuerAndSerialNumber (names compared as RFC 5280 §7.1 says when
    their encodings differ) or subjectKeyIdentifier."""
    if sid.name == "issuer_and_serial_number":
        wanted = sid.chosen
        if certificate.serial_number != wanted["serial_number"].native:
            return False
        issuer = certificate.issuer.public_bytes()
        return issuer == wanted["issuer"].dump() or bool(
            asn1_x509.Name.load(issuer) == wanted["issuer"]
        )
    if sid.name == "subject_key_identifier":
        try:
            extension = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except (x509.ExtensionNotFound, ValueError):
            return False
        return bool(extension.value.digest == sid.chosen.native)
    return False


def _certificate_hash(certificate: x509.Certificate, algorithm: str) -> bytes:
    return hashlib.new(algorithm, certificate.public_bytes(Encoding.DER)).digest()


# keyed by the certificate, which hashes and compares its whole DER
_cached_certificate_hash = functools.lru_cache(maxsize=CERTIFICATE_CACHE_SIZE)(_certificate_hash)
