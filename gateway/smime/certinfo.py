"""Human-readable facts about a certificate, for ``missive certs show``, ``keys list``
and ``smime verify``.

Role: pure functions from an ``x509.Certificate`` to short strings (no I/O, no
validation: the validator says whether a certificate is *trusted*; this module says
what it *is*). Names follow RFC 5280 (§4.2.1.3 keyUsage bit names, §4.2.1.12 EKU names)
and what a certificate is *for* is decided by the same rules as the validator
(``leafcheck.usage_problem``), dates aside.

Robustness: a malformed extension is shown as such (``malformed: ...``) instead of
raising: ``certs show`` must be able to describe a broken certificate.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.smime.leafcheck import usage_problem
from gateway.smime.types import Purpose

_KEY_USAGE_BITS = (
    ("digital_signature", "digitalSignature"),
    ("content_commitment", "nonRepudiation"),
    ("key_encipherment", "keyEncipherment"),
    ("data_encipherment", "dataEncipherment"),
    ("key_agreement", "keyAgreement"),
    ("key_cert_sign", "keyCertSign"),
    ("crl_sign", "cRLSign"),
)
_EKU_NAMES = {
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}
PURPOSE_LABELS = {
    Purpose.SMIME_SIGN: "sign",
    Purpose.SMIME_ENCRYPT: "encrypt",
    Purpose.TLS_SERVER: "TLS server",
    Purpose.TLS_CLIENT: "TLS client",
}


def name(value: x509.Name) -> str:
    return value.rfc4514_string() or "(empty)"


def serial(certificate: x509.Certificate) -> str:
    return f"{certificate.serial_number:x}"


def key_description(certificate: x509.Certificate) -> str:
    """``RSA 2048``, ``EC secp256r1``, ``Ed25519``..."""
    try:
        key = certificate.public_key()
    except ValueError as error:
        return f"unreadable ({error})"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    simple = {
        ed25519.Ed25519PublicKey: "Ed25519",
        ed448.Ed448PublicKey: "Ed448",
        x25519.X25519PublicKey: "X25519",
        x448.X448PublicKey: "X448",
    }
    return next((label for kind, label in simple.items() if isinstance(key, kind)), "other")


def _extension(certificate: x509.Certificate, kind: type[x509.ExtensionType]) -> object | None:
    return certificate.extensions.get_extension_for_class(kind).value


def key_usage(certificate: x509.Certificate) -> str:
    try:
        usage = _extension(certificate, x509.KeyUsage)
    except x509.ExtensionNotFound:
        return "(absent: any)"
    except ValueError as error:
        return f"malformed: {error}"
    assert isinstance(usage, x509.KeyUsage)
    names = [label for attribute, label in _KEY_USAGE_BITS if getattr(usage, attribute)]
    if usage.key_agreement:
        names += [
            label
            for flag, label in (
                ("encipher_only", "encipherOnly"),
                ("decipher_only", "decipherOnly"),
            )
            if getattr(usage, flag)
        ]
    return ", ".join(names) or "(none)"


def extended_key_usage(certificate: x509.Certificate) -> str:
    try:
        eku = _extension(certificate, x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return "(absent: any)"
    except ValueError as error:
        return f"malformed: {error}"
    assert isinstance(eku, x509.ExtendedKeyUsage)
    return ", ".join(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku) or "(none)"


def subject_alt_names(certificate: x509.Certificate) -> str:
    try:
        san = _extension(certificate, x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return "(none)"
    except ValueError as error:
        return f"malformed: {error}"
    assert isinstance(san, x509.SubjectAlternativeName)
    parts = [f"email:{v}" for v in san.get_values_for_type(x509.RFC822Name)]
    parts += [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
    parts += [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
    parts += [f"URI:{v}" for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
    parts += [
        f"otherName:{v.type_id.dotted_string}" for v in san.get_values_for_type(x509.OtherName)
    ]
    return ", ".join(parts) or "(none)"


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = _extension(certificate, x509.BasicConstraints)
    except (x509.ExtensionNotFound, ValueError):
        return False
    return isinstance(constraints, x509.BasicConstraints) and constraints.ca


def purposes(certificate: x509.Certificate) -> list[Purpose]:
    """What the certificate may be used for (key usage, EKU, key type; not dates)."""
    if is_ca(certificate):
        return []
    try:
        extensions = certificate.extensions
        return [
            p for p in PURPOSE_LABELS if usage_problem(certificate, extensions, p, False) is None
        ]
    except ValueError:
        return []


def purposes_text(certificate: x509.Certificate) -> str:
    if is_ca(certificate):
        return "certification authority"
    found = purposes(certificate)
    return ", ".join(PURPOSE_LABELS[p] for p in found) or "nothing Missive can use"


def validity(certificate: x509.Certificate, now: datetime) -> str:
    """``2026-01-01T00:00:00Z .. 2028-01-01T00:00:00Z (expires in 730 days)``."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    text = f"{start:%Y-%m-%dT%H:%M:%SZ} .. {end:%Y-%m-%dT%H:%M:%SZ}"
    if now < start:
        return f"{text} (NOT YET VALID)"
    if now > end:
        return f"{text} (EXPIRED {(now - end).days} days ago)"
    return f"{text} (expires in {(end - now).days} days)"


def describe(certificate: x509.Certificate, now: datetime) -> list[tuple[str, str]]:
    """(label, value) lines for ``certs show``."""
    return [
        ("subject", name(certificate.subject)),
        ("issuer", name(certificate.issuer)),
        ("serial", serial(certificate)),
        ("validity", validity(certificate, now)),
        ("key", key_description(certificate)),
        ("key usage", key_usage(certificate)),
        ("extended key usage", extended_key_usage(certificate)),
        ("subject alt names", subject_alt_names(certificate)),
        ("for", purposes_text(certificate)),
    ]
