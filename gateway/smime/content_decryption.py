"""Content decryption of an (Auth)EnvelopedData: AES-128/192/256 in CBC or GCM, and
3DES-CBC when the caller allows it (RFC 5652 §6.3; RFC 3565; RFC 5084; RFC 3370 §5.1).

Role: ``content_params`` reads and checks the content cipher and its parameters from an
``Envelope`` (RFC 3565 §4.1 for AES-CBC: the IV; RFC 5084 §3.2 for AES-GCM:
GCMParameters; RFC 3370 §5.1 for 3DES: the IV), read directly with ``ber``;
``decrypt_content`` decrypts the content with one content-encryption key.
``gateway.smime.decrypt`` calls both; this module imports only
``gateway.smime.enveloped_data`` of the decryption modules.

Invariants: 3DES is refused unless ``accept_3des`` (the result is then marked ``weak``
by the caller). The plaintext is written into one buffer (``buffers``) and handed over
without a copy. No plaintext is ever returned unless the whole decryption succeeded
(GCM: the tag is verified before anything is returned; CBC: the padding is checked
strictly); a bad padding or tag gives ``None``, and the caller reports it as the same
single ``DecryptError`` as a key failure (RFC 3218 §2.3).

Trust level: handles content-encryption keys and plaintext, loads no private key; no
I/O, no logging.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.smime import ber, buffers, der
from gateway.smime.algorithms import CIPHERS_BY_ASN1_NAME, WEAK_CIPHERS, ContentCipher
from gateway.smime.enveloped_data import (
    INTEGER,
    OID_DATA,
    SEQUENCE,
    Envelope,
    expect,
    octets,
    oid_text,
    tlv_bytes,
)
from gateway.smime.types import DecryptError


@dataclass(frozen=True)
class ContentParams:
    spec: ContentCipher
    iv: bytes  # CBC IV or GCM nonce
    tag_length: int  # GCM only


_CIPHERS_BY_OID_DER = {der.oid(spec.oid): spec for spec in CIPHERS_BY_ASN1_NAME.values()}


def _small_integer(buf: memoryview, element: ber.Tlv) -> int:
    expect(element, ber.UNIVERSAL, INTEGER, "an INTEGER")
    content = buf[element.content_start : element.content_end]
    if not 1 <= len(content) <= 4:
        raise DecryptError("INTEGER out of range")
    return int.from_bytes(content, "big", signed=True)


def content_params(env: Envelope, accept_3des: bool) -> ContentParams:
    """The content cipher and its parameters (RFC 3565 §4.1 for AES-CBC: the IV; RFC 5084
    §3.2 for AES-GCM: GCMParameters; RFC 3370 §5.1 for 3DES: the IV), read directly."""
    if env.content_type != OID_DATA:
        raise DecryptError(f"inner content type {env.content_type} is not id-data")
    view = memoryview(env.content_algorithm)
    parts = ber.children(view, ber.read_tlv(view, 0, len(view)))
    if not 1 <= len(parts) <= 2:
        raise DecryptError("malformed contentEncryptionAlgorithm")
    spec = _CIPHERS_BY_OID_DER.get(tlv_bytes(view, parts[0]))
    if spec is None:
        raise DecryptError(f"unsupported content cipher {oid_text(view, parts[0])}")
    if spec.aead != env.authenticated:
        raise DecryptError(f"{spec.name} does not fit this envelope type")
    if spec.name in WEAK_CIPHERS and not accept_3des:
        raise DecryptError(f"{spec.name} refused (accept_3des is off)")
    if len(parts) != 2:
        raise DecryptError(f"{spec.name} without its parameters")
    if spec.aead:
        expect(parts[1], ber.UNIVERSAL, SEQUENCE, "GCMParameters")
        fields = ber.children(view, parts[1])
        if not 1 <= len(fields) <= 2:
            raise DecryptError("malformed GCMParameters")
        nonce = octets(view, fields[0])
        tag_length = _small_integer(view, fields[1]) if len(fields) == 2 else 12
        if not 12 <= tag_length <= 16 or len(env.mac) != tag_length:  # RFC 5084 §3.2
            raise DecryptError("bad GCM tag length")
        if not 8 <= len(nonce) <= 64:
            raise DecryptError("bad GCM nonce length")
        return ContentParams(spec, nonce, tag_length)
    iv = octets(view, parts[1])
    if len(iv) != spec.block_size:
        raise DecryptError("bad CBC IV")
    total = sum(len(chunk) for chunk in env.chunks)
    if total == 0 or total % spec.block_size:
        raise DecryptError("CBC ciphertext is not a whole number of blocks")
    return ContentParams(spec, iv, 0)


def _decrypt_cbc(params: ContentParams, key: bytes, chunks: list[memoryview]) -> bytes | None:
    """CBC with strict PKCS#7 padding check (RFC 5652 §6.3); None on bad padding. The
    plaintext is written into one buffer and cut to length there (no copy)."""
    block = params.spec.block_size
    cipher = TripleDES(key) if block == 8 else algorithms.AES(key)
    decryptor = Cipher(cipher, modes.CBC(params.iv)).decryptor()
    total = sum(len(chunk) for chunk in chunks)
    out = buffers.presized(total)
    for piece in buffers.slices(chunks):
        out.write(decryptor.update(piece))
    out.write(decryptor.finalize())
    with out.getbuffer() as view:
        tail = bytes(view[total - block : total])
    pad = tail[-1]
    if not 1 <= pad <= block or not hmac.compare_digest(tail[-pad:], bytes((pad,)) * pad):
        return None
    return buffers.finish(out, total - pad)


def _decrypt_gcm(
    params: ContentParams, key: bytes, chunks: list[memoryview], env: Envelope
) -> bytes | None:
    """AES-GCM; None when the tag does not verify (and then nothing is returned)."""
    mode = modes.GCM(params.iv, env.mac, min_tag_length=params.tag_length)
    decryptor = Cipher(algorithms.AES(key), mode).decryptor()
    if env.aad:
        decryptor.authenticate_additional_data(env.aad)
    out = buffers.presized(sum(len(chunk) for chunk in chunks))
    for piece in buffers.slices(chunks):
        out.write(decryptor.update(piece))
    try:
        decryptor.finalize()
    except InvalidTag:
        return None
    return buffers.finish(out)


def decrypt_content(params: ContentParams, key: bytes, env: Envelope) -> bytes | None:
    if params.spec.aead:
        return _decrypt_gcm(params, key, env.chunks, env)
    return _decrypt_cbc(params, key, env.chunks)
