"""ECDH ephemeral-static key agreement for CMS KeyAgreeRecipientInfo (RFC 5753 §3.1).

Role: wrap a content-encryption key (CEK) for an EC recipient and unwrap it again.
Sender: a fresh ephemeral key on the recipient's curve; Z = ECDH(ephemeral, recipient);
KEK = ANSI X9.63 KDF(Z, SharedInfo) with ``ECC-CMS-SharedInfo`` (RFC 5753 §7.2: keyInfo =
the key wrap AlgorithmIdentifier, entityUInfo = the optional ukm, suppPubInfo = the KEK
length in bits as a 32-bit big-endian integer); encryptedKey = AES key wrap (RFC 3394) of
the CEK under the KEK. Primitives come from ``cryptography`` (ECDH, X963KDF, keywrap);
only the SharedInfo encoding is written here (``der``).

Decisions:
- We send dhSinglePass-stdDH-sha256kdf-scheme on P-256, -sha384kdf on P-384 (the RFC 5008
  pairings) and -sha512kdf on P-521, with an AES key wrap of the same size as the CEK
  (the wrap is never weaker than the content cipher), no ukm, and the ephemeral key as
  an uncompressed point with id-ecPublicKey and absent parameters (as OpenSSL does;
  receivers take the curve from their own key).
- We accept every stdDH and cofactorDH scheme with SHA-1/224/256/384/512 (the cofactor
  of the NIST prime curves is 1, so both compute the same Z) and AES-128/192/256 wrap.

Security: ``unwrap`` never raises for a failure that depends on the private key: a
wrong key gives an AES key wrap integrity failure, turned into (random CEK, False) like
RSA key transport (see ``keytransport``), so every failure surfaces as one DecryptError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF

from gateway.smime import der
from gateway.smime.algorithms import AES_WRAP_OIDS
from gateway.smime.asn1 import ECDH_SCHEMES
from gateway.smime.types import DecryptError, EncryptError

OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"

_HASH_BY_SUFFIX: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1kdf": hashes.SHA1,
    "sha224kdf": hashes.SHA224,
    "sha256kdf": hashes.SHA256,
    "sha384kdf": hashes.SHA384,
    "sha512kdf": hashes.SHA512,
}

# curve name -> (scheme OID we send, its KDF hash)
_SEND_SCHEMES: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "secp256r1": ("1.3.132.1.11.1", hashes.SHA256),
    "secp384r1": ("1.3.132.1.11.2", hashes.SHA384),
    "secp521r1": ("1.3.132.1.11.3", hashes.SHA512),
}

WRAP_KEY_SIZES = {"aes128_wrap": 16, "aes192_wrap": 24, "aes256_wrap": 32}


@dataclass(frozen=True)
class WrappedForRecipient:
    """What the sender puts in a KeyAgreeRecipientInfo for one recipient."""

    ephemeral_point: bytes  # uncompressed X9.62 point of the ephemeral public key
    key_encryption_algorithm: bytes  # DER AlgorithmIdentifier (scheme with its key wrap)
    encrypted_key: bytes


def shared_info(wrap_algorithm_der: bytes, ukm: bytes | None, kek_size: int) -> bytes:
    """DER ``ECC-CMS-SharedInfo`` (RFC 5753 §7.2)."""
    parts = [wrap_algorithm_der]
    if ukm is not None:
        parts.append(der.explicit(0, der.octet_string(ukm)))
    parts.append(der.explicit(2, der.octet_string((kek_size * 8).to_bytes(4, "big"))))
    return der.sequence(*parts)


def derive_kek(
    shared_secret: bytes, digest: hashes.HashAlgorithm, kek_size: int, info: bytes
) -> bytes:
    """ANSI X9.63 KDF (SEC 1 §3.6.1), as RFC 5753 §3.1.1 prescribes."""
    return X963KDF(algorithm=digest, length=kek_size, sharedinfo=info).derive(shared_secret)


def wrap(recipient: ec.EllipticCurvePublicKey, cek: bytes) -> WrappedForRecipient:
    """Ephemeral-static ECDH and AES key wrap of ``cek`` for one EC recipient."""
    scheme = _SEND_SCHEMES.get(recipient.curve.name)
    if scheme is None:
        raise EncryptError(f"unsupported recipient curve {recipient.curve.name}")
    scheme_oid, digest = scheme
    wrap_oid = AES_WRAP_OIDS.get(len(cek))
    if wrap_oid is None:
        raise EncryptError(f"no AES key wrap for a {len(cek)}-byte key")
    wrap_algorithm = der.sequence(der.oid(wrap_oid))
    ephemeral = ec.generate_private_key(recipient.curve)
    secret = ephemeral.exchange(ec.ECDH(), recipient)
    kek = derive_kek(secret, digest(), len(cek), shared_info(wrap_algorithm, None, len(cek)))
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return WrappedForRecipient(
        ephemeral_point=point,
        key_encryption_algorithm=der.sequence(der.oid(scheme_oid), wrap_algorithm),
        encrypted_key=keywrap.aes_key_wrap(kek, cek),
    )


def scheme_hash(scheme_name: str) -> hashes.HashAlgorithm:
    """The KDF hash of a dhSinglePass scheme, by its asn1crypto name (``asn1.ECDH_SCHEMES``)."""
    if scheme_name not in ECDH_SCHEMES.values():
        raise DecryptError(f"unsupported key agreement scheme {scheme_name}")
    suffix = scheme_name.rsplit("_", 1)[-1]
    return _HASH_BY_SUFFIX[suffix]()


def unwrap(
    private_key: ec.EllipticCurvePrivateKey,
    originator_point: bytes,
    scheme_name: str,
    wrap_algorithm_der: bytes,
    wrap_name: str,
    ukm: bytes | None,
    encrypted_key: bytes,
    cek_size: int,
) -> tuple[bytes, bool]:
    """(CEK, ok); a secret-dependent failure gives (random CEK, False). A malformed
    originator point or an unknown scheme is structural and raises ``DecryptError``."""
    digest = scheme_hash(scheme_name)
    kek_size = WRAP_KEY_SIZES.get(wrap_name)
    if kek_size is None:
        raise DecryptError(f"unsupported key wrap {wrap_name}")
    try:
        originator = ec.EllipticCurvePublicKey.from_encoded_point(
            private_key.curve, originator_point
        )
    except ValueError:
        raise DecryptError("originator key is not a point on the recipient's curve") from None
    secret = private_key.exchange(ec.ECDH(), originator)
    kek = derive_kek(secret, digest, kek_size, shared_info(wrap_algorithm_der, ukm, kek_size))
    try:
        cek = keywrap.aes_key_unwrap(kek, encrypted_key)
    except (keywrap.InvalidUnwrap, ValueError):
        return os.urandom(cek_size), False
    if len(cek) != cek_size:
        return os.urandom(cek_size), False
    return cek, True
