"""Hand-made CMS envelopes for the failure tests: a chosen CEK, cipher, padding or
recipient type, assembled with ``gateway.smime.der`` (what peers could send us)."""

from __future__ import annotations

import os

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.smime import der
from gateway.smime.encrypt import (
    OID_AUTH_ENVELOPED_DATA,
    OID_DATA,
    OID_ENVELOPED_DATA,
    Recipient,
    _recipient_infos,
)

OID_3DES = "1.2.840.113549.3.7"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
OID_AES256_GCM = "2.16.840.1.101.3.4.1.46"


def content_info(content_type: str, envelope: bytes) -> bytes:
    return der.sequence(der.oid(content_type), der.explicit(0, envelope))


def enveloped(
    recipient_infos: bytes, algorithm: bytes, ciphertext: bytes, version: int = 0
) -> bytes:
    eci = der.sequence(der.oid(OID_DATA), algorithm, der.implicit(0, ciphertext, constructed=False))
    return content_info(
        OID_ENVELOPED_DATA, der.sequence(der.integer(version), recipient_infos, eci)
    )


def auth_enveloped(
    recipient_infos: bytes,
    nonce: bytes,
    icv_len: int,
    ciphertext: bytes,
    mac: bytes,
    auth_attrs: bytes = b"",
) -> bytes:
    """AuthEnvelopedData; ``auth_attrs`` is the DER SET OF Attribute (re-tagged [1])."""
    algorithm = der.sequence(
        der.oid(OID_AES256_GCM), der.sequence(der.octet_string(nonce), der.integer(icv_len))
    )
    eci = der.sequence(der.oid(OID_DATA), algorithm, der.implicit(0, ciphertext, constructed=False))
    tagged_attrs = b"\xa1" + auth_attrs[1:] if auth_attrs else b""
    body = der.sequence(der.integer(0), recipient_infos, eci, tagged_attrs, der.octet_string(mac))
    return content_info(OID_AUTH_ENVELOPED_DATA, body)


def cbc_with_padding(
    certificate: x509.Certificate, padded_plaintext: bytes, *, triple_des: bool = False
) -> bytes:
    """An EnvelopedData whose CBC plaintext is exactly ``padded_plaintext`` (the caller
    chooses the padding, good or bad), for ``certificate`` with RSA PKCS#1 v1.5."""
    key = os.urandom(24 if triple_des else 32)
    iv = os.urandom(8 if triple_des else 16)
    cipher = TripleDES(key) if triple_des else algorithms.AES(key)
    encryptor = Cipher(cipher, modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded_plaintext) + encryptor.finalize()
    infos, version = _recipient_infos([Recipient(certificate)], key)
    algorithm = der.sequence(
        der.oid(OID_3DES if triple_des else OID_AES256_CBC), der.octet_string(iv)
    )
    return enveloped(infos, algorithm, ciphertext, version)


def pkcs7_pad(data: bytes, block: int) -> bytes:
    pad = block - len(data) % block
    return data + bytes((pad,)) * pad


def kekri_only() -> bytes:
    """An EnvelopedData whose only recipient is a KEKRecipientInfo (RFC 5652 §6.2.3)."""
    kekri = der.implicit(
        2,
        der.integer(4)
        + der.sequence(der.octet_string(b"shared-key-id"))
        + der.sequence(der.oid("2.16.840.1.101.3.4.1.45"))
        + der.octet_string(os.urandom(40)),
        constructed=True,
    )
    algorithm = der.sequence(der.oid(OID_AES256_CBC), der.octet_string(os.urandom(16)))
    return enveloped(der.set_of(kekri), algorithm, os.urandom(32), version=2)


def pwri_only() -> bytes:
    """An EnvelopedData whose only recipient is a PasswordRecipientInfo (RFC 3211)."""
    pbkdf2 = der.sequence(
        der.oid("1.2.840.113549.1.5.12"),
        der.sequence(der.octet_string(os.urandom(8)), der.integer(2048)),
    )
    pwri = der.implicit(
        3,
        der.integer(0)
        + der.implicit(0, pbkdf2[2:], constructed=True)
        + der.sequence(
            der.oid("1.2.840.113549.1.9.16.3.9"),
            der.sequence(der.oid(OID_AES256_CBC), der.octet_string(os.urandom(16))),
        )
        + der.octet_string(os.urandom(48)),
        constructed=True,
    )
    algorithm = der.sequence(der.oid(OID_AES256_CBC), der.octet_string(os.urandom(16)))
    return enveloped(der.set_of(pwri), algorithm, os.urandom(32), version=3)
