"""Checks of an end-entity certificate on its own: dates, algorithms, usage by purpose.

Role: the first step of ``gateway.smime.validate`` (pure functions, no I/O). They run
before path building so that the status says what is wrong with the certificate itself
(EXPIRED, WEAK, WRONG_USAGE) whatever its path; the path validator runs after them.

Rules (each decides a ``CertStatus``):
- dates: notBefore <= at <= notAfter (RFC 5280 §4.1.2.5), else EXPIRED;
- algorithms: RSA keys of at least 2048 bits; EC keys on P-256, P-384 or P-521 only; no
  DSA; the certificate's signature not made with MD5 or SHA-1, else WEAK (the path
  validator applies the same to every CA of the path);
- usage by ``Purpose`` (RFC 5280 §4.2.1.3 keyUsage, §4.2.1.12 EKU; RFC 8550 §4.4.2 for
  S/MIME; RFC 5753 for EC key agreement), each checked only when the extension is
  present: SMIME_SIGN digitalSignature or nonRepudiation; SMIME_ENCRYPT keyEncipherment
  (RSA) or keyAgreement (EC), and only RSA or EC keys (what the encryptor can use);
  TLS_SERVER digitalSignature, keyEncipherment or keyAgreement; TLS_CLIENT
  digitalSignature. EKU must contain emailProtection (S/MIME), serverAuth or clientAuth
  (TLS); anyExtendedKeyUsage alone is not accepted (fail closed). A certificate with
  basicConstraints cA is not an end entity unless it is itself a configured anchor.
  Otherwise WRONG_USAGE.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.smime.types import CertStatus, Purpose, ValidationResult

MIN_RSA_BITS = 2048
ACCEPTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
WEAK_HASHES = ("md5", "sha1")
# what cryptography raises when an extension of a certificate cannot be parsed
MALFORMED_ERRORS = (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)

_EKU_FOR_PURPOSE = {
    Purpose.SMIME_SIGN: (ExtendedKeyUsageOID.EMAIL_PROTECTION, "emailProtection"),
    Purpose.SMIME_ENCRYPT: (ExtendedKeyUsageOID.EMAIL_PROTECTION, "emailProtection"),
    Purpose.TLS_SERVER: (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
    Purpose.TLS_CLIENT: (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
}


def leaf_problem(
    certificate: x509.Certificate, purpose: Purpose, when: datetime, is_anchor: bool = False
) -> ValidationResult | None:
    """The first problem of the end-entity certificate itself, or None.

    Raises one of ``MALFORMED_ERRORS`` when an extension is malformed (INVALID)."""
    extensions = certificate.extensions  # parses every extension: ValueError if malformed
    if when < certificate.not_valid_before_utc:
        return ValidationResult(
            CertStatus.EXPIRED,
            f"certificate not valid before {certificate.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
        )
    if when > certificate.not_valid_after_utc:
        return ValidationResult(
            CertStatus.EXPIRED,
            f"certificate expired on {certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        )
    weakness = key_weakness(certificate) or signature_weakness(certificate)
    if weakness:
        return ValidationResult(CertStatus.WEAK, weakness)
    usage = usage_problem(certificate, extensions, purpose, is_anchor)
    if usage:
        return ValidationResult(CertStatus.WRONG_USAGE, usage)
    return None


def key_weakness(certificate: x509.Certificate) -> str | None:
    """Why the certificate's public key is refused, or None."""
    try:
        key = certificate.public_key()
    except Exception:  # noqa: BLE001 - UnsupportedAlgorithm and friends
        return "public key algorithm not supported"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return f"RSA key of {key.key_size} bits (at least {MIN_RSA_BITS} required)"
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA keys are refused"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in ACCEPTED_CURVES:
        return f"elliptic curve {key.curve.name} is refused"
    return None


def signature_weakness(certificate: x509.Certificate) -> str | None:
    """Why the certificate's own signature algorithm is refused (MD5, SHA-1), or None."""
    try:
        algorithm = certificate.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - UnsupportedAlgorithm: an OID cryptography lacks
        return "certificate signature algorithm not supported"
    if algorithm is not None and algorithm.name in WEAK_HASHES:
        return f"certificate signed with {algorithm.name.upper()}, refused"
    return None


def usage_problem(
    certificate: x509.Certificate, extensions: x509.Extensions, purpose: Purpose, is_anchor: bool
) -> str | None:
    """Key usage / EKU / basic constraints problem for ``purpose``, or None."""
    constraints = _value(extensions, x509.BasicConstraints)
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca and not is_anchor:
        return "a CA certificate cannot be used as an end-entity certificate"
    key = certificate.public_key()
    key_problem = _key_type_problem(key, purpose)
    if key_problem:
        return key_problem
    usage = _value(extensions, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not _usage_allows(usage, key, purpose):
        return f"key usage does not allow {purpose.value}"
    eku = _value(extensions, x509.ExtendedKeyUsage)
    wanted, wanted_name = _EKU_FOR_PURPOSE[purpose]
    if isinstance(eku, x509.ExtendedKeyUsage) and wanted not in eku:
        return f"extended key usage lacks {wanted_name}"
    return None


def _value(extensions: x509.Extensions, kind: type[x509.ExtensionType]) -> object | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _key_type_problem(key: object, purpose: Purpose) -> str | None:
    if purpose is Purpose.SMIME_ENCRYPT and not isinstance(
        key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    ):
        return "only RSA and EC keys can be encrypted to"
    if purpose is not Purpose.SMIME_ENCRYPT and not isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        return "this key type cannot sign"
    return None


def _usage_allows(usage: x509.KeyUsage, key: object, purpose: Purpose) -> bool:
    if purpose is Purpose.SMIME_SIGN:
        return bool(usage.digital_signature or usage.content_commitment)
    if purpose is Purpose.SMIME_ENCRYPT:
        if isinstance(key, ec.EllipticCurvePublicKey):
            return bool(usage.key_agreement)
        return bool(usage.key_encipherment)
    if purpose is Purpose.TLS_SERVER:
        return bool(usage.digital_signature or usage.key_encipherment or usage.key_agreement)
    return bool(usage.digital_signature)
