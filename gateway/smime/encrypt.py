"""Encrypt a MIME entity for its recipients: CMS EnvelopedData (AES-CBC, RFC 5652 §6) or
AuthEnvelopedData (AES-GCM, RFC 5083 / RFC 5084), wrapped as application/pkcs7-mime.

Role: the outbound half of the envelope. Input is the entity to protect (already signed,
CRLF-canonical and 7-bit: the caller's job, ``gateway.smime.sign``); output is DER, or the
MIME entity carrying it (RFC 8551 §3.3: smime-type ``enveloped-data``, or
``authEnveloped-data`` for AuthEnvelopedData).

Per recipient: RSA PKCS#1 v1.5 or RSA-OAEP key transport (``keytransport``), or ECDH
ephemeral-static key agreement for EC certificates (``ecdh``); the recipient identified by
issuerAndSerialNumber or subjectKeyIdentifier (RFC 5652 §6.2.1, §6.2.2). One fresh CEK
per message (``os.urandom``); a fresh IV / 96-bit GCM nonce per message (RFC 5084 §3.2).
Which algorithms to use is decided by ``gateway.smime.algorithms`` (``plan_recipients``).

Decisions:
- 3DES and AES-192 are never sent (``EncryptError``); GCM only in AuthEnvelopedData.
- No authAttrs in AuthEnvelopedData (not needed for id-data, RFC 5083 §2.1, and Debian
  12's OpenSSL 3.0.19 mishandles them, openssl #26101); the GCM tag is 16 octets.
- Versions per RFC 5652 §6.1 (0 when every recipient is ktri by issuerAndSerialNumber,
  else 2) and RFC 5083 §2.1 (0); recipientInfos sorted as DER requires (SET OF).
- The DER is laid out from its headers (``der.header``: every length is known before
  encrypting) and the ciphertext is streamed after them, chunk by chunk, into one
  output buffer (``buffers``), base64-encoded on the way for ``encrypt_entity``: a
  50 MB message costs about one output's worth of memory. asn1crypto is not used to
  build (4.6 ms per message, measured); this is hand-written on purpose and kept small.

Security notes: recipients' certificates must have been validated by the caller
(``ChainValidator``, purpose SMIME_ENCRYPT); this module only refuses keys it cannot
use. Never logs content or keys.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.base import AEADEncryptionContext, CipherContext

from gateway.smime import buffers, der, ecdh, keytransport
from gateway.smime.algorithms import (
    AUTO,
    DEFAULT_CIPHER,
    ECDH,
    KEY_TRANSPORTS,
    RSA_PKCS1V15,
    ContentCipher,
    check_send_cipher,
    choose_for_recipients,
    key_kind,
    public_key_of,
)
from gateway.smime.smime_parts import pkcs7_mime_entity
from gateway.smime.types import EncryptError, RecipientCapabilities

OID_DATA = "1.2.840.113549.1.7.1"
OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_AUTH_ENVELOPED_DATA = "1.2.840.113549.1.9.16.1.23"

ISSUER_SERIAL = "issuer-serial"
SKI = "ski"
ID_TYPES = (ISSUER_SERIAL, SKI)

GCM_NONCE_SIZE = 12  # RFC 5084 §3.2: 12 octets RECOMMENDED
GCM_TAG_SIZE = 16


@dataclass(frozen=True)
class Recipient:
    """One recipient of an encrypted message and how its key is conveyed."""

    certificate: x509.Certificate
    key_transport: str = RSA_PKCS1V15  # "rsa-pkcs1v15" | "rsa-oaep" | "ecdh"
    id_type: str = ISSUER_SERIAL  # "issuer-serial" | "ski"

    def __post_init__(self) -> None:
        if self.key_transport not in KEY_TRANSPORTS:
            raise EncryptError(f"unknown key transport {self.key_transport!r}")
        if self.id_type not in ID_TYPES:
            raise EncryptError(f"unknown recipient identifier type {self.id_type!r}")
        kind = key_kind(self.certificate)
        if (kind == "ec") != (self.key_transport == ECDH):
            raise EncryptError(
                f"key transport {self.key_transport} does not fit a {kind.upper()} certificate"
            )


def plan_recipients(
    targets: Sequence[tuple[x509.Certificate, RecipientCapabilities | None]],
    *,
    content_cipher: str = AUTO,
    key_transport: str = AUTO,
    id_type: str = ISSUER_SERIAL,
) -> tuple[str, tuple[Recipient, ...]]:
    """The content cipher and the ``Recipient`` list for certificates with what is known
    of their owners' capabilities (``algorithms.choose_for_recipients``)."""
    choice = choose_for_recipients(targets, content_cipher, key_transport)
    recipients = tuple(
        Recipient(cert, transport, id_type)
        for (cert, _), transport in zip(targets, choice.key_transports, strict=True)
    )
    return choice.cipher, recipients


# --------------------------------------------------------------------------- identifiers


@dataclass(frozen=True)
class _Identity:
    issuer_and_serial: bytes  # DER IssuerAndSerialNumber, issuer as encoded in the cert
    ski: bytes | None


@functools.lru_cache(maxsize=1024)
def _identity(certificate: x509.Certificate) -> _Identity:
    """The certificate's identifiers, cached: the same recipients come back often."""
    tbs = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))[
        "tbs_certificate"
    ]
    issuer_and_serial = der.sequence(tbs["issuer"].dump(), tbs["serial_number"].dump())
    try:
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return _Identity(issuer_and_serial, None)
    return _Identity(issuer_and_serial, ski.value.digest)


def _ski_of(recipient: Recipient) -> bytes:
    ski = _identity(recipient.certificate).ski
    if ski is None:
        raise EncryptError(
            "recipient certificate has no subjectKeyIdentifier (RFC 5652 §6.2.1): use issuer-serial"
        )
    return ski


# --------------------------------------------------------------------------- recipient infos


def _key_trans_recipient_info(recipient: Recipient, cek: bytes) -> tuple[bytes, int]:
    """(DER KeyTransRecipientInfo, its version) (RFC 5652 §6.2.1)."""
    public_key = public_key_of(recipient.certificate)
    assert isinstance(public_key, rsa.RSAPublicKey)  # checked by Recipient
    if recipient.id_type == SKI:
        version, rid = 2, der.implicit(0, _ski_of(recipient), constructed=False)
    else:
        version, rid = 0, _identity(recipient.certificate).issuer_and_serial
    encrypted_key = keytransport.wrap(public_key, cek, recipient.key_transport)
    info = der.sequence(
        der.integer(version),
        rid,
        keytransport.algorithm_identifier(recipient.key_transport),
        der.octet_string(encrypted_key),
    )
    return info, version


def _key_agree_recipient_info(recipient: Recipient, cek: bytes) -> bytes:
    """DER ``[1] IMPLICIT KeyAgreeRecipientInfo`` (RFC 5652 §6.2.2, RFC 5753 §3.1.1)."""
    public_key = public_key_of(recipient.certificate)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)  # checked by Recipient
    wrapped = ecdh.wrap(public_key, cek)
    if recipient.id_type == SKI:
        # rKeyId [0] IMPLICIT RecipientKeyIdentifier ::= SEQUENCE { subjectKeyIdentifier }
        rid = der.implicit(0, der.octet_string(_ski_of(recipient)), constructed=True)
    else:
        rid = _identity(recipient.certificate).issuer_and_serial
    originator_key = der.implicit(  # originatorKey [1] IMPLICIT OriginatorPublicKey
        1,
        der.sequence(der.oid(ecdh.OID_EC_PUBLIC_KEY)) + der.bit_string(wrapped.ephemeral_point),
        constructed=True,
    )
    body = b"".join(
        (
            der.integer(3),
            der.explicit(0, originator_key),
            wrapped.key_encryption_algorithm,
            der.sequence(der.sequence(rid, der.octet_string(wrapped.encrypted_key))),
        )
    )
    return der.implicit(1, body, constructed=True)


def _recipient_infos(recipients: Sequence[Recipient], cek: bytes) -> tuple[bytes, int]:
    """(DER SET OF RecipientInfo, EnvelopedData version per RFC 5652 §6.1)."""
    infos: list[bytes] = []
    all_version_0 = True
    for recipient in recipients:
        if recipient.key_transport == ECDH:
            infos.append(_key_agree_recipient_info(recipient, cek))
            all_version_0 = False
        else:
            info, version = _key_trans_recipient_info(recipient, cek)
            infos.append(info)
            all_version_0 = all_version_0 and version == 0
    return der.set_of(*infos), 0 if all_version_0 else 2


# --------------------------------------------------------------------------- content


class _ContentEncryptor:
    """AES-CBC (PKCS#7 padding, RFC 5652 §6.3) or AES-GCM (RFC 5084 §3.2) over the
    content, chunk by chunk, with a fresh IV / 96-bit nonce."""

    def __init__(self, spec: ContentCipher, key: bytes, content_length: int) -> None:
        self.spec = spec
        self._padding = b""
        self._context: CipherContext
        if spec.aead:
            nonce = os.urandom(GCM_NONCE_SIZE)
            self._context = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
            params = der.sequence(der.octet_string(nonce), der.integer(GCM_TAG_SIZE))
            self.ciphertext_length = content_length
        else:
            iv = os.urandom(16)
            self._context = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
            params = der.octet_string(iv)
            pad = 16 - content_length % 16
            self._padding = bytes((pad,)) * pad
            self.ciphertext_length = content_length + pad
        self.algorithm = der.sequence(der.oid(spec.oid), params)

    def chunks(self, content: bytes) -> Iterator[bytes]:
        """The ciphertext, in pieces of about ``buffers.CHUNK`` octets."""
        for piece in buffers.slices([content]):
            yield self._context.update(piece)
        if self._padding:
            yield self._context.update(self._padding)
        yield self._context.finalize()

    def mac(self) -> bytes:
        """AuthEnvelopedData's ``mac`` TLV (after ``chunks`` is exhausted); b"" for CBC."""
        if not self.spec.aead:
            return b""
        assert isinstance(self._context, AEADEncryptionContext)
        return der.octet_string(self._context.tag)


def _prefix(
    encryptor: _ContentEncryptor, recipient_infos: bytes, version: int
) -> tuple[bytes, int]:
    """(every octet of the ContentInfo before the ciphertext, the total DER length).

    ContentInfo { contentType, [0] { (Auth)EnvelopedData { version, recipientInfos,
    EncryptedContentInfo { id-data, algorithm, [0] IMPLICIT ciphertext } [, mac] } } }."""
    aead = encryptor.spec.aead
    ciphertext_length = encryptor.ciphertext_length
    mac_length = 2 + GCM_TAG_SIZE if aead else 0
    eci_head = b"".join(
        (
            der.oid(OID_DATA),
            encryptor.algorithm,
            der.context_header(0, False, ciphertext_length),
        )
    )
    eci_length = len(eci_head) + ciphertext_length
    envelope_head = b"".join(
        (
            der.integer(0 if aead else version),
            recipient_infos,
            der.header(der.SEQUENCE, eci_length),
            eci_head,
        )
    )
    envelope_length = len(envelope_head) + ciphertext_length + mac_length
    envelope_head = der.header(der.SEQUENCE, envelope_length) + envelope_head
    envelope_length += len(der.header(der.SEQUENCE, envelope_length))
    content_type = der.oid(OID_AUTH_ENVELOPED_DATA if aead else OID_ENVELOPED_DATA)
    explicit_head = der.context_header(0, True, envelope_length)
    inner_length = len(content_type) + len(explicit_head) + envelope_length
    prefix = b"".join(
        (der.header(der.SEQUENCE, inner_length), content_type, explicit_head, envelope_head)
    )
    total = len(prefix) + ciphertext_length + mac_length
    return prefix, total


def _prepare(
    content: bytes, recipients: Sequence[Recipient], cipher: str
) -> tuple[_ContentEncryptor, bytes, int]:
    if not recipients:
        raise EncryptError("no recipient to encrypt to")
    spec = check_send_cipher(cipher)
    cek = os.urandom(spec.key_size)
    recipient_infos, version = _recipient_infos(recipients, cek)
    encryptor = _ContentEncryptor(spec, cek, len(content))
    prefix, total = _prefix(encryptor, recipient_infos, version)
    return encryptor, prefix, total


def encrypt(
    content: bytes, recipients: Sequence[Recipient], *, cipher: str = DEFAULT_CIPHER
) -> bytes:
    """DER ContentInfo of an EnvelopedData (``aes-*-cbc``) or AuthEnvelopedData
    (``aes-*-gcm``) protecting ``content`` for every recipient. Raises ``EncryptError``
    for an unusable cipher, key or certificate."""
    encryptor, prefix, total = _prepare(content, recipients, cipher)
    out = buffers.presized(total)
    out.write(prefix)
    for chunk in encryptor.chunks(content):
        out.write(chunk)
    out.write(encryptor.mac())
    return buffers.finish(out)


def smime_type_for(cipher: str) -> str:
    """The smime-type parameter for a message encrypted with ``cipher`` (RFC 8551 §3.3:
    ``enveloped-data``; RFC 8551 §3.4 / RFC 5083: ``authEnveloped-data``)."""
    return "authEnveloped-data" if check_send_cipher(cipher).aead else "enveloped-data"


def encrypt_entity(
    entity: bytes, recipients: Sequence[Recipient], *, cipher: str = DEFAULT_CIPHER
) -> bytes:
    """The ``application/pkcs7-mime`` entity (header fields, empty line, base64 DER in
    76-character CRLF lines) carrying ``encrypt(entity, ...)``; the caller adds the
    message's outer header fields. The DER is streamed into base64 (never held whole)."""
    encryptor, prefix, total = _prepare(entity, recipients, cipher)
    header = pkcs7_mime_entity(b"", smime_type_for(cipher), "smime.p7m")  # header only
    out = buffers.presized(len(header) + buffers.base64_lines_length(total))
    out.write(header)
    sink = buffers.Base64Lines(out)
    sink.write(prefix)
    for chunk in encryptor.chunks(entity):
        sink.write(chunk)
    sink.write(encryptor.mac())
    sink.close()
    return buffers.finish(out)


__all__ = [
    "ID_TYPES",
    "ISSUER_SERIAL",
    "SKI",
    "Recipient",
    "encrypt",
    "encrypt_entity",
    "plan_recipients",
    "smime_type_for",
]
