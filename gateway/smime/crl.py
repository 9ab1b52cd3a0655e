"""CRL checks without I/O (RFC 5280 §5 profile, §6.3 CRL processing), used by revocation.

Role: parse a CRL (PEM or DER), decide whether it may be used to answer for a given
certificate, and look a serial number up. Fetching, caching and the choice between CRL
and OCSP live in ``gateway.smime.revocation``; this module is pure so each rule is unit
tested on bytes.

A CRL is usable for certificate C issued by CA I only when (each failure gives a reason):
- it is signed by I's key, with an accepted algorithm (not MD5 or SHA-1, as for
  certificates), I's keyUsage, when present, asserts cRLSign (§6.3.3 (f)), and its issuer
  name is I's subject and C's issuer (§6.3.3 (b)(1));
- it is a complete CRL: delta CRLs (§5.2.4) and indirect CRLs (§5.2.5) are not supported;
  an issuingDistributionPoint restricted to user or CA certificates must match C, one
  restricted to some reasons cannot prove C good (treated as unusable), and when it names
  a distribution point, C's own distribution points must name it too (§6.3.3 (b)(2));
- it carries no critical extension we do not process, at CRL or entry level (§5.2, §5.3);
- it is fresh: thisUpdate not after now + skew, nextUpdate present and not before
  now - grace. ``grace`` is zero by default: a CRL past its nextUpdate is unavailable
  (the gateway then tries OCSP, then applies the revocation mode).

Revocation: an entry for C's serial means revoked, whatever its revocation date (the
gateway checks present status; ``certificateHold`` counts as revoked while listed).
``removeFromCRL`` entries only make sense in delta CRLs and are treated as not listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

WEAK_HASHES = ("md5", "sha1")

# CRL extensions this module processes (RFC 5280 §5.2); a critical one outside this set
# makes the CRL unusable. Delta indicators are known, and refused explicitly.
_KNOWN_CRL_EXTENSIONS = frozenset(
    {
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.ISSUING_DISTRIBUTION_POINT,
        ExtensionOID.DELTA_CRL_INDICATOR,
        ExtensionOID.FRESHEST_CRL,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    }
)
_KNOWN_ENTRY_EXTENSIONS = frozenset(
    {
        x509.oid.CRLEntryExtensionOID.CRL_REASON,
        x509.oid.CRLEntryExtensionOID.INVALIDITY_DATE,
    }
)


class CrlError(ValueError):
    """The bytes are not a CRL this module can read."""


@dataclass(frozen=True)
class ParsedCrl:
    """A CRL with what every lookup needs read once: number, update times, scope
    (issuingDistributionPoint) and an index of the revoked serial numbers (the
    library's lookup by serial is a linear scan: 20 µs for 200 entries, measured)."""

    crl: x509.CertificateRevocationList
    der: bytes
    fingerprint: bytes  # SHA-256 of the DER
    number: int | None
    this_update: datetime
    next_update: datetime | None
    scope: x509.IssuingDistributionPoint | None
    revoked: dict[int, x509.RevokedCertificate]


@dataclass(frozen=True)
class RevokedEntry:
    """What a CRL says about a revoked serial number."""

    revoked_at: datetime
    reason: str  # RFC 5280 §5.3.1 reason name, "unspecified" when absent


def parse_crl(data: bytes) -> ParsedCrl:
    """Load a PEM or DER CRL; raise ``CrlError`` when it cannot be read."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        number = _extension_value(crl, x509.CRLNumber)
        scope = _extension_value(crl, x509.IssuingDistributionPoint)
        revoked = {entry.serial_number: entry for entry in crl}
    except (ValueError, x509.DuplicateExtension) as error:
        raise CrlError(f"not a readable CRL ({error})") from None
    der = crl.public_bytes(Encoding.DER)
    return ParsedCrl(
        crl=crl,
        der=der,
        fingerprint=_sha256(der),
        number=number.crl_number if isinstance(number, x509.CRLNumber) else None,
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        scope=scope if isinstance(scope, x509.IssuingDistributionPoint) else None,
        revoked=revoked,
    )


def _extension_value(
    crl: x509.CertificateRevocationList, kind: type[x509.ExtensionType]
) -> x509.ExtensionType | None:
    try:
        return crl.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def signature_problem(parsed: ParsedCrl, issuer: x509.Certificate) -> str | None:
    """Why ``parsed`` is not a CRL issued by ``issuer``, or None (time-independent)."""
    crl = parsed.crl
    if crl.issuer != issuer.subject:
        return "CRL issuer name does not match the certificate issuer"
    if not _may_sign_crls(issuer):
        return "issuer key usage does not allow signing CRLs"
    weak = _weak_signature(crl)
    if weak:
        return weak
    try:
        valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError):
        valid = False
    if not valid:
        return "CRL signature does not verify with the issuer's key"
    return _structure_problem(crl)


def _may_sign_crls(issuer: x509.Certificate) -> bool:
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(usage.crl_sign)


def _weak_signature(crl: x509.CertificateRevocationList) -> str | None:
    try:
        algorithm = crl.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - UnsupportedAlgorithm: an OID cryptography lacks
        return "CRL signature algorithm not supported"
    if algorithm is not None and algorithm.name in WEAK_HASHES:
        return f"CRL signed with {algorithm.name.upper()}, refused"
    return None


def _structure_problem(crl: x509.CertificateRevocationList) -> str | None:
    """Delta/indirect CRLs and unprocessed critical extensions (RFC 5280 §5.2, §5.3)."""
    for extension in crl.extensions:
        if extension.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            return "delta CRLs are not supported"
        if extension.critical and extension.oid not in _KNOWN_CRL_EXTENSIONS:
            return f"CRL has an unknown critical extension {extension.oid.dotted_string}"
        if isinstance(extension.value, x509.IssuingDistributionPoint):
            if extension.value.indirect_crl:
                return "indirect CRLs are not supported"
    for entry in crl:
        for entry_extension in entry.extensions:
            oid = entry_extension.oid
            if entry_extension.critical and oid not in _KNOWN_ENTRY_EXTENSIONS:
                return f"CRL entry has an unknown critical extension {oid.dotted_string}"
    return None


def freshness_problem(
    parsed: ParsedCrl, now: datetime, *, grace: timedelta, skew: timedelta
) -> str | None:
    """Why ``parsed`` is not current at ``now``, or None (RFC 5280 §6.3.3 (a))."""
    if parsed.this_update > now + skew:
        return f"CRL thisUpdate {parsed.this_update:%Y-%m-%dT%H:%M:%SZ} is in the future"
    if parsed.next_update is None:
        return "CRL has no nextUpdate"
    if now > parsed.next_update + grace:
        return f"CRL expired at {parsed.next_update:%Y-%m-%dT%H:%M:%SZ} (nextUpdate)"
    return None


def scope_problem(parsed: ParsedCrl, certificate: x509.Certificate) -> str | None:
    """Why ``parsed`` does not cover ``certificate`` (issuingDistributionPoint), or None."""
    if parsed.crl.issuer != certificate.issuer:
        return "CRL issuer name does not match the certificate issuer"
    idp = parsed.scope
    if idp is None:
        return None
    is_ca = _is_ca(certificate)
    if idp.only_contains_user_certs and is_ca:
        return "CRL covers only end-entity certificates"
    if idp.only_contains_ca_certs and not is_ca:
        return "CRL covers only CA certificates"
    if idp.only_contains_attribute_certs:
        return "CRL covers only attribute certificates"
    if idp.only_some_reasons is not None:
        return "CRL covers only some revocation reasons"
    if idp.full_name and not _names_overlap(idp.full_name, _distribution_names(certificate)):
        return "CRL distribution point does not match the certificate's"
    return None


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _distribution_names(certificate: x509.Certificate) -> list[x509.GeneralName]:
    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except x509.ExtensionNotFound:
        return []
    return [name for point in points.value for name in (point.full_name or ())]


def _names_overlap(idp_names: list[x509.GeneralName], cert_names: list[x509.GeneralName]) -> bool:
    # a certificate without distribution points relies on the CRL its issuer publishes
    return not cert_names or any(name in cert_names for name in idp_names)


def lookup(parsed: ParsedCrl, serial_number: int) -> RevokedEntry | None:
    """The CRL's entry for ``serial_number``, or None when it is not listed."""
    entry = parsed.revoked.get(serial_number)
    if entry is None:
        return None
    try:
        reason_flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        reason_flag = x509.ReasonFlags.unspecified
    if reason_flag is x509.ReasonFlags.remove_from_crl:
        return None
    return RevokedEntry(revoked_at=entry.revocation_date_utc, reason=reason_flag.value)
