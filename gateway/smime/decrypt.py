"""Decrypt CMS EnvelopedData and AuthEnvelopedData (RFC 5652 §6, RFC 5083/5084) and the
application/pkcs7-mime entities that carry them (RFC 8551 §3.3).

Role: the inbound half of the envelope, run by the secure agent that holds the private
keys. Accepts what we send and what real peers emit: DER or BER with indefinite lengths
and constructed OCTET STRINGs (NSS), AES-128/192/256 in CBC or GCM, 3DES when the caller
allows it (``accept_3des``; the result is then marked ``weak``), RSA PKCS#1 v1.5, RSA-OAEP
with SHA-1/224/256/384/512 and a label, ECDH ephemeral-static (RFC 5753), recipients named
by issuerAndSerialNumber or subjectKeyIdentifier. The parts live by concern:
``gateway.smime.enveloped_data`` (the framing), ``gateway.smime.recipient_infos``
(``DecryptionKey``, ``RecipientId``, matching recipient infos to our keys, key
unwrapping) and ``gateway.smime.content_decryption`` (CBC/GCM); this module imports
them, never the reverse.

Entry points: ``decrypt`` (DER/BER), ``decrypt_entity`` (a MIME entity as bytes) and
``decrypt_parsed`` (an entity already parsed by ``mime.parse_entity``: the inbound agent
parses each message once).

Parsing: the framing, KeyTransRecipientInfos and the content cipher's parameters are
read with ``ber`` (zero-copy memoryviews: a 50 MB message is not copied level by level
as asn1crypto would, and the common case costs no asn1crypto parse); KeyAgreeRecipient-
Infos, OAEP parameters (cached per encoding), authAttrs and re-encoded issuer names are
parsed with asn1crypto plus ``gateway.smime.asn1``'s registrations. The plaintext is
written into one buffer (``buffers``) and handed over without a copy.

Failure contract: every failure (unsupported or damaged structure, no key for any
recipient, wrong key, padding, GCM tag, 3DES refused) raises ``DecryptError`` whose
``str()`` is the one public text; the cause is in ``.detail`` for the local log only.
No exception of another type escapes, and no plaintext is ever returned unless the
whole decryption succeeded (GCM: the tag is verified before anything is returned; CBC:
the padding is checked strictly).

RFC 3218 §2.3 (Bleichenbacher countermeasure): a failure of the key decryption (RSA
padding, OAEP, key unwrap, wrong CEK length) is not reported at that point: the content
is decrypted anyway with a random CEK (``keytransport.unwrap``, ``ecdh.unwrap``), and
the outcome is the same single ``DecryptError`` as a content failure, after the same
work. Every matching recipient info is unwrapped, so the number of private-key
operations does not depend on which one fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from gateway.smime.algorithms import WEAK_CIPHERS
from gateway.smime.content_decryption import content_params, decrypt_content
from gateway.smime.enveloped_data import parse_content_info
from gateway.smime.mime import MimeEntity, canonicalize_crlf, parse_entity
from gateway.smime.recipient_infos import DecryptionKey, RecipientId, recipient_candidates
from gateway.smime.smime_parts import SmimeKind, smime_kind, smime_type
from gateway.smime.transfer import body_bytes
from gateway.smime.types import DecryptError, MalformedMessage

ENCRYPTED_SMIME_TYPES = frozenset({"enveloped-data", "authEnveloped-data"})


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Decrypted:
    """A successfully decrypted message (never built for a failure)."""

    content: bytes  # the inner MIME entity, as the sender encrypted it
    cipher: str  # "aes-256-gcm", "aes-128-cbc", "des-ede3-cbc", ...
    key_transport: str  # "rsa-pkcs1v15" | "rsa-oaep" | "ecdh"
    weak: bool  # 3DES: accepted only because accept_3des allowed it
    recipient_id: RecipientId
    authenticated: bool  # AuthEnvelopedData: integrity-protected by the GCM tag
    certificate: x509.Certificate  # the certificate of the key that opened it


# --------------------------------------------------------------------------- entry points


def decrypt(
    der_or_ber: bytes, keys: Sequence[DecryptionKey], *, accept_3des: bool = False
) -> Decrypted:
    """Decrypt a ContentInfo holding EnvelopedData or AuthEnvelopedData with one of
    ``keys``. Raises ``DecryptError`` for every failure (see the module docstring)."""
    try:
        return _decrypt(memoryview(der_or_ber), keys, accept_3des)
    except DecryptError:
        raise
    except Exception as exc:  # noqa: BLE001 - contract: one typed error for hostile input
        raise DecryptError(f"malformed CMS: {type(exc).__name__}: {str(exc)[:200]}") from None


def decrypt_entity(
    entity: bytes, keys: Sequence[DecryptionKey], *, accept_3des: bool = False
) -> Decrypted:
    """Decrypt an ``application/pkcs7-mime`` entity (or ``x-pkcs7-mime``, or
    ``application/octet-stream`` named ``*.p7m``: RFC 8551 §3.2.2) with an encrypted
    smime-type or none; its body is base64 (or binary) DER/BER."""
    try:
        parsed = parse_entity(canonicalize_crlf(entity))
    except MalformedMessage as exc:
        raise DecryptError(f"malformed entity: {exc}") from None
    return decrypt_parsed(parsed, keys, accept_3des=accept_3des)


def decrypt_parsed(
    parsed: MimeEntity, keys: Sequence[DecryptionKey], *, accept_3des: bool = False
) -> Decrypted:
    """``decrypt_entity`` for an entity the caller has already parsed (``parse_entity``
    over CRLF-canonical bytes): the inbound agent parses each message once."""
    try:
        if smime_kind(parsed) is not SmimeKind.PKCS7_MIME:
            raise DecryptError(f"not an application/pkcs7-mime entity ({parsed.content_type})")
        declared = smime_type(parsed)
        if declared is not None and declared not in ENCRYPTED_SMIME_TYPES:
            raise DecryptError(f"smime-type {declared} is not an encrypted message")
        body = body_bytes(parsed)
    except MalformedMessage as exc:
        raise DecryptError(f"malformed entity: {exc}") from None
    return decrypt(body, keys, accept_3des=accept_3des)


# --------------------------------------------------------------------------- the whole


def _decrypt(buf: memoryview, keys: Sequence[DecryptionKey], accept_3des: bool) -> Decrypted:
    env = parse_content_info(buf)
    params = content_params(env, accept_3des)
    candidates = recipient_candidates(env.recipient_infos, keys)
    size = params.spec.key_size
    unwrapped = [(candidate, *candidate.unwrap(size)) for candidate in candidates]
    usable = [(candidate, cek) for candidate, cek, ok in unwrapped if ok]
    # RFC 3218 §2.3: with no usable CEK, decrypt with the random one all the same
    attempts = usable or [(unwrapped[0][0], unwrapped[0][1])]
    for candidate, cek in attempts:
        content = decrypt_content(params, cek, env)
        if content is not None and usable:
            return Decrypted(
                content=content,
                cipher=params.spec.name,
                key_transport=candidate.key_transport,
                weak=params.spec.name in WEAK_CIPHERS,
                recipient_id=candidate.recipient_id,
                authenticated=env.authenticated,
                certificate=candidate.key.certificate,
            )
    raise DecryptError("key or content decryption failed")
