"""Pure builders of the development PKI: names, keys, certificates and CRLs (no file IO).

Profiles (imitating IGC-Santé, with obviously-test names; see ``gateway.pki.dev``):

- CA certificates: basicConstraints CA:TRUE with pathLenConstraint (root 1, intermediates 0),
  critical; keyUsage keyCertSign + cRLSign, critical; SKI; AKI (intermediates).
- Person signature certificate: keyUsage digitalSignature + nonRepudiation, critical;
  EKU emailProtection; SAN rfc822Name (RFC 8550 §3: the address lives in the SAN, not in
  an ``emailAddress`` attribute of the DN).
- Person encryption certificate: keyUsage keyEncipherment (RSA key transport, RFC 8551
  §2.4.2 / RFC 3560) or keyAgreement (EC keys: ECDH key agreement, RFC 5753 and RFC 8550
  §4.4.2 — an EC key cannot encipher), critical; EKU emailProtection; SAN rfc822Name.
- Server certificate: keyUsage digitalSignature (+ keyEncipherment for RSA), critical;
  EKU serverAuth + clientAuth (the same certificate serves STARTTLS and the client side of
  relaying between operators); SAN dNSName + iPAddress 127.0.0.1 (tests dial loopback).
- Every leaf: basicConstraints CA:FALSE (critical), SKI, AKI, and, when configured, a CRL
  distribution point ``{crl_base_url}/{ca_name}.crl`` and an AIA OCSP URL.

Serial numbers are 159 random bits (RFC 5280 §4.1.2.2: positive, at most 20 octets).
Signatures are SHA-256 (RSA PKCS#1 v1.5 or ECDSA). CRLs carry a CRL number and an AKI
(RFC 5280 §5.2.1, §5.2.3).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

ORGANISATION = "MISSIVE DEV (TEST ONLY)"
TRUST_SPACE_UNIT = "IGC-SANTE-LIKE DEV"
STRUCTURE_ID = "0002 000000000"  # IGC-Santé puts "0002 <SIREN>" in an OU; this one is fake
CA_COMMON_NAMES: dict[str, str] = {
    "root": "AC RACINE MISSIVE DEV",
    "personnes": "AC IGC-SANTE-LIKE PERSONNES DEV",
    "serveurs": "AC IGC-SANTE-LIKE SERVEURS DEV",
}
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
DEFAULT_RSA_BITS = 2048

# keyword of x509.KeyUsage for each RFC 5280 §4.2.1.3 name accepted by the API
_KEY_USAGE_FIELDS: dict[str, str] = {
    "digitalSignature": "digital_signature",
    "nonRepudiation": "content_commitment",
    "keyEncipherment": "key_encipherment",
    "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement",
    "keyCertSign": "key_cert_sign",
    "cRLSign": "crl_sign",
    "encipherOnly": "encipher_only",
    "decipherOnly": "decipher_only",
}
KEY_USAGE_NAMES: tuple[str, ...] = tuple(_KEY_USAGE_FIELDS)

EKU_OIDS: dict[str, ObjectIdentifier] = {
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "anyExtendedKeyUsage": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}

_DOTTED_OID = re.compile(r"^[0-2](?:\.(?:0|[1-9][0-9]*))+$")


class ProfileError(ValueError):
    """A parameter of a certificate profile is invalid (unknown key usage, bad OID...)."""


@dataclass(frozen=True)
class LeafProfile:
    """Everything that varies between leaf certificates."""

    subject: x509.Name
    key_usage: tuple[str, ...]  # empty: no keyUsage extension
    eku: tuple[str, ...]  # names of EKU_OIDS or dotted OIDs; empty: no EKU extension
    emails: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    not_before: datetime | None = None
    not_after: datetime | None = None


@dataclass(frozen=True)
class Issuer:
    """A CA able to sign: its name in file names, its certificate and its key."""

    name: str
    certificate: x509.Certificate
    key: PrivateKey


def generate_key(*, ec_key: bool, rsa_bits: int = DEFAULT_RSA_BITS) -> PrivateKey:
    """A fresh P-256 key or an RSA key of ``rsa_bits`` (public exponent 65537)."""
    if ec_key:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def key_description(key: PrivateKey) -> str:
    """``rsa-2048`` or ``ec-secp256r1``: compared to what a caller asked for."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    return f"ec-{key.curve.name}"


def ca_name(ca: str) -> x509.Name:
    """DN shaped like ``CN=AC RACINE IGC-SANTE ELEMENTAIRE, OU=IGC-SANTE, OU=0002 …, O=…, C=FR``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, STRUCTURE_ID),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, TRUST_SPACE_UNIT),
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAMES[ca]),
        ]
    )


def person_name(address: str, common_name: str | None = None) -> x509.Name:
    """DN of a person: ``CN=Alice Martin, GN=Alice, SN=Martin, OU=<domain>, O=…, C=FR``.

    Names come from a ``given.surname`` local part; otherwise the CN is the address.
    """
    local, _, domain = address.rpartition("@")
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, domain),
    ]
    parts = local.split(".")
    derived = len(parts) == 2 and all(re.fullmatch(r"[A-Za-z]+(?:-[A-Za-z]+)*", p) for p in parts)
    if derived:
        given, surname = (p.title() for p in parts)
        attributes += [
            x509.NameAttribute(NameOID.GIVEN_NAME, given),
            x509.NameAttribute(NameOID.SURNAME, surname),
        ]
        default_cn = f"{given} {surname}"
    else:
        default_cn = address
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name or default_cn))
    return x509.Name(attributes)


def server_name(hostname: str) -> x509.Name:
    """DN of a server: ``CN=<host>, O=…, C=FR`` (what a liste-blanche DN match compares)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, hostname),
        ]
    )


def key_usage(names: Sequence[str]) -> x509.KeyUsage:
    """``x509.KeyUsage`` from RFC 5280 names (``digitalSignature``, ``keyAgreement``...)."""
    unknown = [n for n in names if n not in _KEY_USAGE_FIELDS]
    if unknown:
        raise ProfileError(
            f"unknown key usage {', '.join(unknown)} (known: {', '.join(KEY_USAGE_NAMES)})"
        )
    flags = dict.fromkeys(_KEY_USAGE_FIELDS.values(), False)
    for name in names:
        flags[_KEY_USAGE_FIELDS[name]] = True
    if (flags["encipher_only"] or flags["decipher_only"]) and not flags["key_agreement"]:
        raise ProfileError("encipherOnly/decipherOnly need keyAgreement (RFC 5280 §4.2.1.3)")
    return x509.KeyUsage(**flags)


def extended_key_usage(names: Sequence[str]) -> x509.ExtendedKeyUsage:
    """EKU from names of ``EKU_OIDS`` or dotted OIDs."""
    oids: list[ObjectIdentifier] = []
    for name in names:
        if name in EKU_OIDS:
            oids.append(EKU_OIDS[name])
        elif _DOTTED_OID.match(name):
            oids.append(ObjectIdentifier(name))
        else:
            raise ProfileError(
                f"unknown extended key usage {name!r} (known: {', '.join(EKU_OIDS)} "
                "or a dotted OID)"
            )
    return x509.ExtendedKeyUsage(oids)


def _revocation_pointers(
    builder: x509.CertificateBuilder, issuer: str, crl_base_url: str | None, ocsp_url: str | None
) -> x509.CertificateBuilder:
    if crl_base_url:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(f"{crl_base_url}/{issuer}.crl")],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if ocsp_url:
        access = x509.AccessDescription(
            x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
    return builder


def _issuer_key_identifier(issuer: Issuer) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _validity(
    now: datetime,
    lifetime: timedelta,
    skew: timedelta,
    profile_before: datetime | None,
    profile_after: datetime | None,
) -> tuple[datetime, datetime]:
    not_after = profile_after or now + lifetime
    not_before = profile_before or min(now - skew, not_after - lifetime)
    if not_after <= not_before:
        raise ProfileError("not_after must be later than not_before")
    return not_before, not_after


def build_ca_certificate(
    ca: str,
    key: PrivateKey,
    *,
    issuer: Issuer | None,
    now: datetime,
    lifetime: timedelta,
    skew: timedelta,
    crl_base_url: str | None,
) -> x509.Certificate:
    """The root (``issuer`` None: self-signed, pathLen 1) or an intermediate (pathLen 0)."""
    signer = issuer.key if issuer else key
    issuer_name = issuer.certificate.subject if issuer else ca_name(ca)
    not_before, not_after = _validity(now, lifetime, skew, None, None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca_name(ca))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0 if issuer else 1), True)
        .add_extension(key_usage(("keyCertSign", "cRLSign")), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer:
        builder = builder.add_extension(_issuer_key_identifier(issuer), critical=False)
        builder = _revocation_pointers(builder, issuer.name, crl_base_url, None)
    return builder.sign(signer, hashes.SHA256())


def build_leaf_certificate(
    profile: LeafProfile,
    public_key: PublicKey,
    issuer: Issuer,
    *,
    now: datetime,
    lifetime: timedelta,
    skew: timedelta,
    crl_base_url: str | None,
    ocsp_url: str | None,
) -> x509.Certificate:
    """A leaf for ``profile``, signed by ``issuer``; validity defaults to ``lifetime``
    from ``now - skew``, capped by the issuer's own notAfter."""
    default_after = min(now + lifetime, issuer.certificate.not_valid_after_utc)
    not_before, not_after = _validity(
        now, lifetime, skew, profile.not_before, profile.not_after or default_after
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(profile.subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_issuer_key_identifier(issuer), critical=False)
    )
    if profile.key_usage:
        builder = builder.add_extension(key_usage(profile.key_usage), critical=True)
    if profile.eku:
        builder = builder.add_extension(extended_key_usage(profile.eku), critical=False)
    alt_names: list[x509.GeneralName] = [x509.RFC822Name(e) for e in profile.emails]
    alt_names += [x509.DNSName(d) for d in profile.dns_names]
    alt_names += [x509.IPAddress(ip) for ip in profile.ip_addresses]
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    builder = _revocation_pointers(builder, issuer.name, crl_base_url, ocsp_url)
    return builder.sign(issuer.key, hashes.SHA256())


@dataclass(frozen=True)
class Revocation:
    """One revoked certificate as recorded in a CA's index."""

    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags | None = None


def build_crl(
    issuer: Issuer,
    revocations: Sequence[Revocation],
    *,
    number: int,
    this_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """A v2 CRL with CRL number and AKI (RFC 5280 §5.2.1, §5.2.3), signed by ``issuer``."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_issuer_key_identifier(issuer), critical=False)
    )
    for revocation in revocations:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(revocation.serial)
            .revocation_date(revocation.revoked_at)
        )
        if revocation.reason is not None:
            entry = entry.add_extension(x509.CRLReason(revocation.reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer.key, hashes.SHA256())
