"""RSA key transport for CMS KeyTransRecipientInfo: PKCS#1 v1.5 and RSAES-OAEP.

Role: encrypt a content-encryption key (CEK) to an RSA recipient, and recover it; build
the KeyEncryptionAlgorithmIdentifier we send and read the ones peers send.

Decisions:
- We send rsaEncryption (RFC 3370 §4.2.1) or RSAES-OAEP with SHA-256 and MGF1-SHA-256
  and no label (RFC 8551 §2.7.1, RFC 4055 §4.1; hash AlgorithmIdentifiers with NULL
  parameters as in RFC 4055's sha256Identifier).
- We accept OAEP with SHA-1/224/256/384/512, any MGF1 hash, and a pSpecified label
  (RFC 8017 §A.2.1); any other mask generation or label source is refused.

Security (RFC 3218 §2.3, Bleichenbacher): ``unwrap`` never raises for a failure that
depends on the private key. A PKCS#1 v1.5 or OAEP decryption error, or a CEK of the wrong
length, yields a *random* CEK of the expected length and ``ok=False``; the caller goes
on with the content decryption, which then fails, and reports one ``DecryptError`` like
any other failure. (The OpenSSL inside ``cryptography`` also applies implicit rejection
to PKCS#1 v1.5, returning a synthetic plaintext instead of an error: measured here.)
Structural problems of the AlgorithmIdentifier (not secret-dependent) raise
``DecryptError`` at once.
"""

from __future__ import annotations

import functools
import os

from asn1crypto import cms
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.smime import der
from gateway.smime.algorithms import RSA_OAEP, RSA_PKCS1V15
from gateway.smime.types import DecryptError, EncryptError

OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
OID_MGF1 = "1.2.840.113549.1.1.8"

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
OID_SHA256 = "2.16.840.1.101.3.4.2.1"


@functools.cache
def algorithm_identifier(key_transport: str) -> bytes:
    """The DER KeyEncryptionAlgorithmIdentifier we send for ``key_transport``."""
    if key_transport == RSA_PKCS1V15:
        return der.sequence(der.oid(OID_RSA_ENCRYPTION), der.null())
    if key_transport == RSA_OAEP:
        sha256 = der.sequence(der.oid(OID_SHA256), der.null())
        params = der.sequence(
            der.explicit(0, sha256),
            der.explicit(1, der.sequence(der.oid(OID_MGF1), sha256)),
        )
        return der.sequence(der.oid(OID_RSAES_OAEP), params)
    raise EncryptError(f"key transport {key_transport!r} is not an RSA key transport")


_OAEP_SHA256 = padding.OAEP(
    mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


def wrap(public_key: rsa.RSAPublicKey, cek: bytes, key_transport: str) -> bytes:
    """The encryptedKey of a KeyTransRecipientInfo."""
    if key_transport == RSA_OAEP:
        return public_key.encrypt(cek, _OAEP_SHA256)
    if key_transport == RSA_PKCS1V15:
        return public_key.encrypt(cek, padding.PKCS1v15())
    raise EncryptError(f"key transport {key_transport!r} is not an RSA key transport")


def _hash_named(name: object) -> hashes.HashAlgorithm:
    factory = HASHES.get(str(name))
    if factory is None:
        raise DecryptError(f"unsupported OAEP hash {name}")
    return factory()


def oaep_padding(algorithm: cms.KeyEncryptionAlgorithm) -> padding.OAEP:
    """The OAEP padding an RSAES-OAEP-params value describes (RFC 8017 §A.2.1)."""
    params = algorithm["parameters"]
    if params.native is None:  # absent: all defaults, SHA-1 and MGF1-SHA-1, empty label
        sha1 = _hash_named("sha1")  # OAEP's use of SHA-1 is not affected by collisions
        return padding.OAEP(mgf=padding.MGF1(sha1), algorithm=sha1, label=None)
    digest = _hash_named(params["hash_algorithm"]["algorithm"].native)
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1":
        raise DecryptError(f"unsupported OAEP mask generation {mgf['algorithm'].dotted}")
    mgf_digest = _hash_named(mgf["parameters"]["algorithm"].native)
    source = params["p_source_algorithm"]
    if source["algorithm"].native != "p_specified":
        raise DecryptError("unsupported OAEP label source")
    label = source["parameters"].native or None
    return padding.OAEP(mgf=padding.MGF1(mgf_digest), algorithm=digest, label=label)


def key_transport_name(algorithm: cms.KeyEncryptionAlgorithm) -> str:
    """``rsa-pkcs1v15`` or ``rsa-oaep``; ``DecryptError`` for anything else."""
    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return RSA_PKCS1V15
    if name == "rsaes_oaep":
        return RSA_OAEP
    raise DecryptError(f"unsupported key transport algorithm {algorithm['algorithm'].dotted}")


@functools.lru_cache(maxsize=64)
def padding_for(algorithm_der: bytes) -> tuple[str, padding.AsymmetricPadding]:
    """(key transport name, padding) of a KeyEncryptionAlgorithmIdentifier, by its
    encoding; cached, since a peer sends the same few encodings over and over.
    ``DecryptError`` when it is not RSA PKCS#1 v1.5 or a supported RSAES-OAEP."""
    algorithm = cms.KeyEncryptionAlgorithm.load(algorithm_der)
    scheme = key_transport_name(algorithm)
    if scheme == RSA_OAEP:
        return scheme, oaep_padding(algorithm)
    return scheme, padding.PKCS1v15()


def unwrap(
    private_key: rsa.RSAPrivateKey,
    encrypted_key: bytes,
    algorithm_der: bytes,
    cek_size: int,
) -> tuple[bytes, bool]:
    """(CEK, ok). On any secret-dependent failure: (random CEK of ``cek_size``, False),
    per RFC 3218 §2.3 (see the module docstring)."""
    _, chosen = padding_for(algorithm_der)
    try:
        cek = private_key.decrypt(encrypted_key, chosen)
    except ValueError:
        return os.urandom(cek_size), False
    if len(cek) != cek_size:
        return os.urandom(cek_size), False
    return cek, True
