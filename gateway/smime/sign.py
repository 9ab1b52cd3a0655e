"""S/MIME signing (RFC 8551 §3.5, RFC 5652 §5): a MIME entity in, a signed MIME entity out.

Role: ``sign`` makes the entity CRLF-canonical and 7-bit clean (``transfer.make_7bit``, RFC
8551 §3.1.1-§3.1.2) so that no relay can break the signature, signs it, and returns
either ``multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256``
(detached, the default, RFC 8551 §3.5.3) or ``application/pkcs7-mime;
smime-type=signed-data`` (opaque, §3.5.2). ``sign_der`` returns the bare CMS ContentInfo.

SignedData is assembled with the project's DER encoder (``gateway.smime.der``), not
asn1crypto (1.5.1 re-encodes quadratically, ~1.8 ms per message, measured) nor
cryptography's PKCS7SignatureBuilder (its attribute set is fixed: no
encryptionKeyPreference, no signingCertificateV2, no GCM in the capabilities). The
eContent of an opaque signature is copied once: every enclosing header is computed from
the lengths and the whole structure is joined in a single ``b"".join``.

Per-signer cache: what every signature of one signer shares (the CertificateSet, the
SignerIdentifier, the signer certificate's SubjectPublicKeyInfo, the signed attributes
other than contentType, messageDigest and signingTime) is encoded once and kept for the
``SIGNER_CACHE_SIZE`` (64) most recent (signer certificate, chain, encryption
certificate, capabilities) combinations; the algorithm identifiers are kept per (key
type, digest, PSS). The key is the certificates themselves, compared by their whole
content (see ``_signer_parts``), so the output is octet for octet the one an uncached
encoding gives (``tests/smime/signverify/test_sign_golden.py``). Memory: 64 entries of
a few KiB each for real chains; certificates and chains come from the key store and the
configuration, never from a message. No decision is cached: the key type and size, and
whether the private key matches the certificate, are checked on every call.

Algorithms: SHA-256 with RSA PKCS#1 v1.5 (signatureAlgorithm rsaEncryption, as OpenSSL
and NSS write it, RFC 3370 §3.2) or, on request, RSASSA-PSS with SHA-256/MGF1-SHA-256 and
a 32-octet salt (RFC 4056); ECDSA with the hash matching the curve (P-256/SHA-256,
P-384/SHA-384, P-521/SHA-512; ecdsa-with-SHA*, parameters absent, RFC 5753 §2.1.1);
Ed25519 (RFC 8419: SHA-512 message digest, pure EdDSA over the signed attributes).

Invariants: signed attributes are always present (RFC 8551 §2.5) and DER-sorted; the
signature covers their SET encoding (RFC 5652 §5.4). The certificates carried are the
signer's, the chain given, and the encryption certificate, each once. SignerInfo uses
issuerAndSerialNumber (version 1, RFC 5652 §5.3).

Security notes: the private key never leaves this process; an RSA key under 2048 bits,
an unsupported key type or a key that does not match the certificate raise
``SignError`` before anything is produced (RFC 8551 §4.3: no keys under 2048 bits).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from gateway.smime import der, smime_parts, transfer
from gateway.smime.attributes import (
    DIGEST_OIDS,
    ID_DATA,
    ID_SIGNED_DATA,
    as_implicit_zero,
    build_signed_attributes,
    issuer_and_serial_number,
    static_signed_attributes,
)
from gateway.smime.capabilities import DEFAULT_CAPABILITIES, MGF1, SmimeCapability
from gateway.smime.types import SignError

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
RSASSA_PSS = "1.2.840.113549.1.1.10"
ECDSA_WITH = {
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
    "sha512": "1.2.840.10045.4.3.4",
}
ED25519 = "1.3.101.112"
MIN_RSA_BITS = 2048
_PSS_SALT_LENGTH = 32
_CURVE_DIGESTS = {"secp256r1": "sha256", "secp384r1": "sha384", "secp521r1": "sha512"}
_SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
SIGNER_CACHE_SIZE = 64  # signers whose shared encodings are kept (see the module docstring)
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def digest_name_for(key: SigningKey) -> str:
    """The message digest used with ``key`` (see the module docstring)."""
    return _digest_for(key, _key_kind(key))


def _digest_for(key: SigningKey, kind: str) -> str:
    if kind == "ec" and isinstance(key, ec.EllipticCurvePrivateKey):
        name = _CURVE_DIGESTS.get(key.curve.name)
        if name is None:
            raise SignError(f"unsupported elliptic curve {key.curve.name}")
        return name
    return "sha512" if kind == "ed25519" else "sha256"


def _check_key_type(key: object) -> SigningKey:
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise SignError(f"unsupported signing key type {type(key).__name__}")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise SignError(f"RSA key of {key.key_size} bits is under {MIN_RSA_BITS}")
    return key


def _check_key_matches(key: SigningKey, signer_public_key: bytes) -> None:
    """Compared on every message: only the certificate's side is a cached encoding."""
    if key.public_key().public_bytes(*_SPKI) != signer_public_key:
        raise SignError("the signing key does not match the signer certificate")


def _key_kind(key: SigningKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ec"
    return "ed25519"


def _digest_algorithm_identifier(name: str) -> bytes:
    # RFC 5754 §2: SHA-2 AlgorithmIdentifiers are written with parameters absent.
    return der.sequence(der.oid(DIGEST_OIDS[name]))


def _pss_parameters(digest: str) -> bytes:
    hash_id = der.sequence(der.oid(DIGEST_OIDS[digest]), der.null())
    mgf = der.sequence(der.oid(MGF1), hash_id)
    return der.sequence(
        der.explicit(0, hash_id),
        der.explicit(1, mgf),
        der.explicit(2, der.integer(_PSS_SALT_LENGTH)),
    )


def _signature_algorithm_identifier(kind: str, digest: str, pss: bool) -> bytes:
    if kind == "rsa":
        if pss:
            return der.sequence(der.oid(RSASSA_PSS), _pss_parameters(digest))
        return der.sequence(der.oid(RSA_ENCRYPTION), der.null())
    if kind == "ec":
        return der.sequence(der.oid(ECDSA_WITH[digest]))
    return der.sequence(der.oid(ED25519))


def _raw_signature(key: SigningKey, data: bytes, digest: str, pss: bool) -> bytes:
    algorithm = _HASHES[digest]()
    if isinstance(key, rsa.RSAPrivateKey):
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(algorithm), salt_length=_PSS_SALT_LENGTH)
            if pss
            else padding.PKCS1v15()
        )
        return key.sign(data, pad, algorithm)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(algorithm))
    return key.sign(data)


@dataclass(frozen=True, slots=True)
class _SignerParts:
    """What every signature of one signer shares, encoded once (RFC 5652 §5.1, §5.3)."""

    public_key: bytes  # the signer certificate's SubjectPublicKeyInfo, DER
    static_attributes: tuple[bytes, ...]  # the signed attributes that never change
    issuer_and_serial: bytes  # the SignerIdentifier
    certificates: bytes  # [0] IMPLICIT CertificateSet


@functools.lru_cache(maxsize=SIGNER_CACHE_SIZE)
def _signer_parts(
    signer_cert: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    encryption_cert: x509.Certificate | None,
    capabilities: tuple[SmimeCapability, ...] | None,
) -> _SignerParts:
    """The per-signer encodings. Cached by the certificates themselves: cryptography
    compares and hashes a ``Certificate`` by its whole parsed content, from which
    ``public_bytes`` re-encodes the DER, so equal keys give the same octets (without
    paying ~15 µs of re-encoding per certificate per message)."""
    signer_der = signer_cert.public_bytes(serialization.Encoding.DER)
    carried = [signer_cert, *chain, *([encryption_cert] if encryption_cert else [])]
    return _SignerParts(
        public_key=signer_cert.public_key().public_bytes(*_SPKI),
        static_attributes=static_signed_attributes(
            signer_cert, signer_der, capabilities, encryption_cert
        ),
        issuer_and_serial=issuer_and_serial_number(signer_cert),
        certificates=_certificate_set(carried),
    )


@dataclass(frozen=True, slots=True)
class _AlgorithmParts:
    """The encodings that depend on the algorithms alone."""

    digest_algorithm: bytes  # DigestAlgorithmIdentifier
    head: bytes  # SignedData's CMSVersion 1 and digestAlgorithms SET
    signature_algorithm: bytes


@functools.lru_cache(maxsize=32)
def _algorithm_parts(key_kind: str, digest: str, pss: bool) -> _AlgorithmParts:
    digest_id = _digest_algorithm_identifier(digest)
    return _AlgorithmParts(
        digest_algorithm=digest_id,
        # CMSVersion 1: issuerAndSerialNumber, id-data (RFC 5652 §5.1)
        head=der.integer(1) + der.set_of(digest_id),
        signature_algorithm=_signature_algorithm_identifier(key_kind, digest, pss),
    )


def _certificate_set(certificates: Sequence[x509.Certificate]) -> bytes:
    unique = {cert.public_bytes(serialization.Encoding.DER) for cert in certificates}
    return der.implicit(0, b"".join(sorted(unique)), True)


_DETACHED_CONTENT_INFO = der.sequence(der.oid(ID_DATA))
_SIGNER_INFO_VERSION = der.integer(1)  # issuerAndSerialNumber (RFC 5652 §5.3)


def _encapsulated_pieces(content: bytes, detached: bool) -> list[bytes]:
    """EncapsulatedContentInfo as pieces whose join is its DER (content not copied)."""
    if detached:
        return [_DETACHED_CONTENT_INFO]
    content_type = der.oid(ID_DATA)
    octets_header = der.header(der.OCTET_STRING, len(content))
    explicit_header = der.context_header(0, True, len(octets_header) + len(content))
    inner = len(content_type) + len(explicit_header) + len(octets_header) + len(content)
    return [der.header(der.SEQUENCE, inner), content_type, explicit_header, octets_header, content]


def sign_der(
    content: bytes,
    signer_cert: x509.Certificate,
    signer_key: object,
    chain: Sequence[x509.Certificate] = (),
    *,
    detached: bool = True,
    capabilities: Sequence[SmimeCapability] | None = DEFAULT_CAPABILITIES,
    encryption_cert: x509.Certificate | None = None,
    signing_time: datetime | None = None,
    rsa_pss: bool = False,
) -> bytes:
    """A CMS ContentInfo(SignedData) over ``content`` (exact bytes, id-data), DER.

    ``detached`` leaves eContent out (RFC 5652 §5.2). ``capabilities=None`` omits the
    smimeCapabilities attribute. Raises ``SignError`` for an unusable key."""
    return _sign_der(
        content,
        signer_cert,
        _check_key_type(signer_key),
        chain,
        detached=detached,
        capabilities=capabilities,
        encryption_cert=encryption_cert,
        signing_time=signing_time,
        rsa_pss=rsa_pss,
    )


def _sign_der(
    content: bytes,
    signer_cert: x509.Certificate,
    key: SigningKey,
    chain: Sequence[x509.Certificate],
    *,
    detached: bool,
    capabilities: Sequence[SmimeCapability] | None,
    encryption_cert: x509.Certificate | None,
    signing_time: datetime | None,
    rsa_pss: bool,
) -> bytes:
    signer = _signer_parts(
        signer_cert,
        tuple(chain),
        encryption_cert,
        None if capabilities is None else tuple(capabilities),
    )
    _check_key_matches(key, signer.public_key)
    kind = _key_kind(key)
    digest = _digest_for(key, kind)
    pss = rsa_pss and kind == "rsa"
    algorithms = _algorithm_parts(kind, digest, pss)
    signed_attributes = build_signed_attributes(
        content_type=ID_DATA,
        message_digest=hashlib.new(digest, content).digest(),
        signing_time=signing_time or datetime.now(UTC),
        static_attributes=signer.static_attributes,
    )
    signer_info = der.sequence(
        _SIGNER_INFO_VERSION,
        signer.issuer_and_serial,
        algorithms.digest_algorithm,
        as_implicit_zero(signed_attributes),
        algorithms.signature_algorithm,
        der.octet_string(_raw_signature(key, signed_attributes, digest, pss)),
    )
    pieces = [
        algorithms.head,
        *_encapsulated_pieces(content, detached),
        signer.certificates,
        der.set_of(signer_info),
    ]
    return _content_info(pieces)


def _content_info(signed_data_pieces: list[bytes]) -> bytes:
    """ContentInfo { id-signedData, [0] EXPLICIT SignedData } joined in one copy."""
    signed_data_length = sum(len(piece) for piece in signed_data_pieces)
    signed_data_header = der.header(der.SEQUENCE, signed_data_length)
    explicit_length = len(signed_data_header) + signed_data_length
    explicit_header = der.context_header(0, True, explicit_length)
    content_type = der.oid(ID_SIGNED_DATA)
    total = len(content_type) + len(explicit_header) + explicit_length
    return b"".join(
        (
            der.header(der.SEQUENCE, total),
            content_type,
            explicit_header,
            signed_data_header,
            *signed_data_pieces,
        )
    )


def sign(
    entity: bytes,
    signer_cert: x509.Certificate,
    signer_key: object,
    chain: Sequence[x509.Certificate] = (),
    *,
    detached: bool = True,
    capabilities: Sequence[SmimeCapability] | None = DEFAULT_CAPABILITIES,
    encryption_cert: x509.Certificate | None = None,
    signing_time: datetime | None = None,
    rsa_pss: bool = False,
) -> bytes:
    """Sign a MIME entity and return the signed entity (headers and body, CRLF).

    ``entity`` is the MIME entity to protect (Content-* fields and body; for header
    protection, see ``header_protection.with_protected_headers``); the caller puts the message's
    From/To/Subject/... on the result. Raises ``SignError`` for an unusable key and
    ``MalformedMessage`` for a multipart without its boundary."""
    content = transfer.make_7bit(entity)
    key = _check_key_type(signer_key)
    cms = _sign_der(
        content,
        signer_cert,
        key,
        chain,
        detached=detached,
        capabilities=capabilities,
        encryption_cert=encryption_cert,
        signing_time=signing_time,
        rsa_pss=rsa_pss,
    )
    if detached:
        return smime_parts.multipart_signed(
            content, cms, smime_parts.MICALG_BY_DIGEST[digest_name_for(key)]
        )
    return smime_parts.pkcs7_mime_entity(cms, "signed-data")
