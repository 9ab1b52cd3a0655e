"""Build SignedData by hand for the negative verification tests.

Each crafted structure carries a *correct* signature over whatever attributes the test
chose, so that a rejection can only come from the check under test (a duplicate
attribute, a missing messageDigest, a swapped certificate...), not from a broken
signature. Built with ``gateway.smime.der`` like the real signer, but nothing here is
shared with ``gateway.smime.sign``: the tests must not trust the code they test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from gateway.smime import der

ID_DATA = "1.2.840.113549.1.7.1"
CONTENT_TYPE = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
SIGNING_TIME = "1.2.840.113549.1.9.5"
SHA256 = "2.16.840.1.101.3.4.2.1"
SHA512 = "2.16.840.1.101.3.4.2.3"
SHA1 = "1.3.14.3.2.26"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
ED25519 = "1.3.101.112"
MS_ENC_KEY_PREF = "1.3.6.1.4.1.311.16.4"


def attribute(oid: str, *values: bytes) -> bytes:
    return der.sequence(der.oid(oid), der.set_of(*values))


def issuer_serial(cert: x509.Certificate) -> bytes:
    return der.sequence(cert.issuer.public_bytes(), der.integer(cert.serial_number))


def ski_sid(cert: x509.Certificate) -> bytes:
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return der.implicit(0, ski, False)


def basic_attributes(content: bytes, digest: str = "sha256") -> list[bytes]:
    return [
        attribute(CONTENT_TYPE, der.oid(ID_DATA)),
        attribute(MESSAGE_DIGEST, der.octet_string(hashlib.new(digest, content).digest())),
        attribute(SIGNING_TIME, der.utc_time(datetime.now(UTC))),
    ]


def _sign(key: object, data: bytes, digest: str) -> tuple[bytes, bytes]:
    chosen = {"sha256": hashes.SHA256(), "sha512": hashes.SHA512(), "sha1": hashes.SHA1()}[digest]  # noqa: S303
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), chosen), der.sequence(
            der.oid(RSA_ENCRYPTION), der.null()
        )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(chosen)), der.sequence(der.oid(ECDSA_SHA256))
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.sign(data), der.sequence(der.oid(ED25519))


def craft_signed_data(
    content: bytes,
    signer: x509.Certificate,
    key: object,
    *,
    attributes: Sequence[bytes] | None,
    certificates: Sequence[x509.Certificate] = (),
    sid: bytes | None = None,
    digest: str = "sha256",
    detached: bool = True,
    sort_attributes: bool = True,
    signature_key: object | None = None,
) -> bytes:
    """ContentInfo(SignedData) with one signer. ``attributes=None`` leaves signedAttrs
    out (the signature then covers the content); ``signature_key`` signs instead of
    ``key`` (for a signature that does not match the certificate)."""
    digest_oid = {"sha256": SHA256, "sha512": SHA512, "sha1": SHA1}[digest]
    digest_id = der.sequence(der.oid(digest_oid))
    signing_key = signature_key or key
    if attributes is None:
        signature, sig_alg = _sign(signing_key, content, digest)
        signed_attrs = b""
    else:
        members = sorted(attributes) if sort_attributes else list(attributes)
        attr_set = der.tlv(der.SET, b"".join(members))
        signature, sig_alg = _sign(signing_key, attr_set, digest)
        signed_attrs = b"\xa0" + attr_set[1:]
    version = 3 if sid is not None and sid[:1] == b"\x80" else 1
    signer_info = der.sequence(
        der.integer(version),
        sid if sid is not None else issuer_serial(signer),
        digest_id,
        signed_attrs,
        sig_alg,
        der.octet_string(signature),
    )
    encap = (
        der.sequence(der.oid(ID_DATA))
        if detached
        else der.sequence(der.oid(ID_DATA), der.explicit(0, der.octet_string(content)))
    )
    certs = b"".join(c.public_bytes(serialization.Encoding.DER) for c in certificates)
    signed_data = der.sequence(
        der.integer(version),
        der.set_of(digest_id),
        encap,
        der.implicit(0, certs, True) if certificates else b"",
        der.set_of(signer_info),
    )
    return der.sequence(der.oid("1.2.840.113549.1.7.2"), der.explicit(0, signed_data))


def signed_data_without_signers(content: bytes, certificates: Sequence[x509.Certificate]) -> bytes:
    certs = b"".join(c.public_bytes(serialization.Encoding.DER) for c in certificates)
    signed_data = der.sequence(
        der.integer(1),
        der.set_of(der.sequence(der.oid(SHA256))),
        der.sequence(der.oid(ID_DATA)),
        der.implicit(0, certs, True),
        der.set_of(),
    )
    return der.sequence(der.oid("1.2.840.113549.1.7.2"), der.explicit(0, signed_data))
