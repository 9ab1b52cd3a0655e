"""Decrypt CMS EnvelopedData and AuthEnvelopedData (RFC 5652 §6, RFC 5083/5084) and the
application/pkcs7-mime entities that carry them (RFC 8551 §3.3).

Role: the inbound half of the envelope, run by the secure agent that holds the private
keys. Accepts what we send and what real peers emit: DER or BER with indefinite lengths
and constructed OCTET STRINGs (NSS), AES-128/192/256 in CBC or GCM, 3DES when the caller
allows it (``accept_3des``; the result is then marked ``weak``), RSA PKCS#1 v1.5, RSA-OAEP
with SHA-1/224/256/384/512 and a label, ECDH ephemeral-static (RFC 5753), recipients named
by issuerAndSerialNumber or subjectKeyIdentifier. Among several keys of one address
(renewed certificates: queued mail must stay readable) the key is chosen by the
RecipientIdentifier. KEKRecipientInfo, PasswordRecipientInfo and OtherRecipientInfo are
never used: a message with no other recipient info for our keys is refused.

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

import functools
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asn1crypto import cms, core
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import gateway.smime.asn1  # noqa: F401 - registers GCMParameters and the ECDH schemes
from gateway.smime import ber, buffers, der, ecdh, keytransport
from gateway.smime.algorithms import CIPHERS_BY_ASN1_NAME, ECDH, WEAK_CIPHERS, ContentCipher
from gateway.smime.mime import MimeEntity, canonicalize_crlf, parse_entity
from gateway.smime.smime_parts import SmimeKind, smime_kind, smime_type
from gateway.smime.transfer import body_bytes
from gateway.smime.types import DecryptError, MalformedMessage

OID_DATA = "1.2.840.113549.1.7.1"
OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_AUTH_ENVELOPED_DATA = "1.2.840.113549.1.9.16.1.23"
# A message naming our keys more often than this is hostile: each match costs a private-key
# operation (a legitimate one names each of our certificates once).
MAX_CANDIDATES = 8
_KNOWN_OIDS = (OID_DATA, OID_ENVELOPED_DATA, OID_AUTH_ENVELOPED_DATA)
ENCRYPTED_SMIME_TYPES = frozenset({"enveloped-data", "authEnveloped-data"})

_SEQUENCE, _SET, _INTEGER, _OCTET_STRING, _OID = 16, 17, 2, 4, 6
_OTHER_RECIPIENT_TYPES = {
    (ber.CONTEXT, 2): "kekri",
    (ber.CONTEXT, 3): "pwri",
    (ber.CONTEXT, 4): "ori",
}


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class DecryptionKey:
    """A private key with the certificate that names it in RecipientInfos."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def __post_init__(self) -> None:
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        mine = self.private_key.public_key().public_bytes(serialization.Encoding.DER, spki)
        theirs = self.certificate.public_key().public_bytes(serialization.Encoding.DER, spki)
        if mine != theirs:
            raise ValueError("the private key does not belong to the certificate")


@dataclass(frozen=True)
class RecipientId:
    """How the message named the recipient whose key opened it."""

    kind: str  # "issuer-serial" | "ski"
    issuer: str  # RFC 4514 form of the certificate's issuer
    serial: int
    ski: bytes | None = None

    def __str__(self) -> str:
        if self.kind == "ski" and self.ski is not None:
            return f"ski:{self.ski.hex()}"
        return f"issuer-serial:{self.issuer};serial={self.serial:#x}"


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


# --------------------------------------------------------------------------- framing


@dataclass(frozen=True)
class _Envelope:
    authenticated: bool
    recipient_infos: bytes  # BER/DER of the SET OF RecipientInfo
    content_type: str
    content_algorithm: bytes  # BER/DER AlgorithmIdentifier
    chunks: list[memoryview]  # the encrypted content, as found
    aad: bytes  # DER of authAttrs as a SET (RFC 5083 §2.2), b"" when absent
    mac: bytes  # AuthEnvelopedData's mac, b"" for EnvelopedData


def _expect(element: ber.Tlv, tag_class: int, number: int, what: str) -> None:
    if not element.is_(tag_class, number):
        raise DecryptError(f"unexpected element where {what} belongs")


def _oid_text(buf: memoryview, element: ber.Tlv) -> str:
    _expect(element, ber.UNIVERSAL, _OID, "an OBJECT IDENTIFIER")
    raw = bytes(buf[element.start : element.end])
    for known in _KNOWN_OIDS:  # the usual ones, without a parse
        if raw == der.oid(known):
            return known
    return str(core.ObjectIdentifier.load(raw).dotted)


def _raw(buf: memoryview, element: ber.Tlv) -> bytes:
    return bytes(buf[element.start : element.end])


def _parse_content_info(buf: memoryview) -> _Envelope:
    """ContentInfo (RFC 5652 §3) -> the parts of an (Auth)EnvelopedData."""
    top = ber.read_top(buf)
    _expect(top, ber.UNIVERSAL, _SEQUENCE, "ContentInfo")
    parts = ber.children(buf, top)
    if len(parts) != 2 or not parts[1].is_(ber.CONTEXT, 0):
        raise DecryptError("malformed ContentInfo")
    content_type = _oid_text(buf, parts[0])
    if content_type not in (OID_ENVELOPED_DATA, OID_AUTH_ENVELOPED_DATA):
        raise DecryptError(f"content type {content_type} is not an encrypted message")
    inner = ber.children(buf, parts[1])
    if len(inner) != 1:
        raise DecryptError("malformed ContentInfo content")
    _expect(inner[0], ber.UNIVERSAL, _SEQUENCE, "EnvelopedData")
    return _parse_envelope(buf, inner[0], content_type == OID_AUTH_ENVELOPED_DATA)


def _parse_envelope(buf: memoryview, envelope: ber.Tlv, authenticated: bool) -> _Envelope:
    """EnvelopedData (RFC 5652 §6.1) or AuthEnvelopedData (RFC 5083 §2.1)."""
    fields = ber.children(buf, envelope)
    index = 0

    def take(tag_class: int, number: int, optional: bool = False) -> ber.Tlv | None:
        nonlocal index
        if index < len(fields) and fields[index].is_(tag_class, number):
            index += 1
            return fields[index - 1]
        if optional:
            return None
        raise DecryptError("malformed (Auth)EnvelopedData")

    take(ber.UNIVERSAL, _INTEGER)  # version: not needed to decrypt
    take(ber.CONTEXT, 0, optional=True)  # originatorInfo: certificates we do not need
    infos = take(ber.UNIVERSAL, _SET)
    content_info = take(ber.UNIVERSAL, _SEQUENCE)
    assert infos is not None and content_info is not None
    auth_attrs = mac = None
    if authenticated:
        auth_attrs = take(ber.CONTEXT, 1, optional=True)
        mac = take(ber.UNIVERSAL, _OCTET_STRING)
        take(ber.CONTEXT, 2, optional=True)  # unauthAttrs: nothing we use
    else:
        take(ber.CONTEXT, 1, optional=True)  # unprotectedAttrs: nothing we use
    if index != len(fields):
        raise DecryptError("unexpected elements in (Auth)EnvelopedData")
    content_type, algorithm, chunks = _parse_encrypted_content_info(buf, content_info)
    return _Envelope(
        authenticated=authenticated,
        recipient_infos=_raw(buf, infos),
        content_type=content_type,
        content_algorithm=algorithm,
        chunks=chunks,
        aad=_auth_attrs_aad(buf, auth_attrs) if auth_attrs is not None else b"",
        mac=b"".join(ber.octet_string_chunks(buf, mac)) if mac is not None else b"",
    )


def _parse_encrypted_content_info(
    buf: memoryview, element: ber.Tlv
) -> tuple[str, bytes, list[memoryview]]:
    """EncryptedContentInfo (RFC 5652 §6.1): (content type, algorithm, content chunks)."""
    parts = ber.children(buf, element)
    if len(parts) != 3 or not parts[2].is_(ber.CONTEXT, 0):
        raise DecryptError("EncryptedContentInfo without its encrypted content")
    _expect(parts[1], ber.UNIVERSAL, _SEQUENCE, "contentEncryptionAlgorithm")
    return _oid_text(buf, parts[0]), _raw(buf, parts[1]), ber.octet_string_chunks(buf, parts[2])


def _auth_attrs_aad(buf: memoryview, element: ber.Tlv) -> bytes:
    """RFC 5083 §2.2: the AAD is the DER encoding of authAttrs with the SET OF tag."""
    raw = _raw(buf, element)
    attributes = cms.CMSAttributes.load(b"\x31" + raw[1:])
    return bytes(attributes.dump(force=True))


# --------------------------------------------------------------------------- content cipher


@dataclass(frozen=True)
class _ContentParams:
    spec: ContentCipher
    iv: bytes  # CBC IV or GCM nonce
    tag_length: int  # GCM only


_CIPHERS_BY_OID_DER = {der.oid(spec.oid): spec for spec in CIPHERS_BY_ASN1_NAME.values()}


def _octets(buf: memoryview, element: ber.Tlv) -> bytes:
    """The contents of an OCTET STRING (primitive or constructed) as bytes."""
    _expect(element, ber.UNIVERSAL, _OCTET_STRING, "an OCTET STRING")
    return b"".join(ber.octet_string_chunks(buf, element))


def _small_integer(buf: memoryview, element: ber.Tlv) -> int:
    _expect(element, ber.UNIVERSAL, _INTEGER, "an INTEGER")
    content = buf[element.content_start : element.content_end]
    if not 1 <= len(content) <= 4:
        raise DecryptError("INTEGER out of range")
    return int.from_bytes(content, "big", signed=True)


def _content_params(env: _Envelope, accept_3des: bool) -> _ContentParams:
    """The content cipher and its parameters (RFC 3565 §4.1 for AES-CBC: the IV; RFC 5084
    §3.2 for AES-GCM: GCMParameters; RFC 3370 §5.1 for 3DES: the IV), read directly."""
    if env.content_type != OID_DATA:
        raise DecryptError(f"inner content type {env.content_type} is not id-data")
    view = memoryview(env.content_algorithm)
    parts = ber.children(view, ber.read_tlv(view, 0, len(view)))
    if not 1 <= len(parts) <= 2:
        raise DecryptError("malformed contentEncryptionAlgorithm")
    spec = _CIPHERS_BY_OID_DER.get(_raw(view, parts[0]))
    if spec is None:
        raise DecryptError(f"unsupported content cipher {_oid_text(view, parts[0])}")
    if spec.aead != env.authenticated:
        raise DecryptError(f"{spec.name} does not fit this envelope type")
    if spec.name in WEAK_CIPHERS and not accept_3des:
        raise DecryptError(f"{spec.name} refused (accept_3des is off)")
    if len(parts) != 2:
        raise DecryptError(f"{spec.name} without its parameters")
    if spec.aead:
        _expect(parts[1], ber.UNIVERSAL, _SEQUENCE, "GCMParameters")
        fields = ber.children(view, parts[1])
        if not 1 <= len(fields) <= 2:
            raise DecryptError("malformed GCMParameters")
        nonce = _octets(view, fields[0])
        tag_length = _small_integer(view, fields[1]) if len(fields) == 2 else 12
        if not 12 <= tag_length <= 16 or len(env.mac) != tag_length:  # RFC 5084 §3.2
            raise DecryptError("bad GCM tag length")
        if not 8 <= len(nonce) <= 64:
            raise DecryptError("bad GCM nonce length")
        return _ContentParams(spec, nonce, tag_length)
    iv = _octets(view, parts[1])
    if len(iv) != spec.block_size:
        raise DecryptError("bad CBC IV")
    total = sum(len(chunk) for chunk in env.chunks)
    if total == 0 or total % spec.block_size:
        raise DecryptError("CBC ciphertext is not a whole number of blocks")
    return _ContentParams(spec, iv, 0)


def _decrypt_cbc(params: _ContentParams, key: bytes, chunks: list[memoryview]) -> bytes | None:
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
    params: _ContentParams, key: bytes, chunks: list[memoryview], env: _Envelope
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


def _decrypt_content(params: _ContentParams, key: bytes, env: _Envelope) -> bytes | None:
    if params.spec.aead:
        return _decrypt_gcm(params, key, env.chunks, env)
    return _decrypt_cbc(params, key, env.chunks)


# --------------------------------------------------------------------------- recipients


@dataclass(frozen=True)
class _KeyIds:
    issuer: asn1_x509.Name
    issuer_and_serial: bytes  # DER IssuerAndSerialNumber with the certificate's octets
    issuer_text: str
    serial: int
    ski: bytes | None


@functools.lru_cache(maxsize=256)
def _key_ids(certificate: x509.Certificate) -> _KeyIds:
    tbs = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))[
        "tbs_certificate"
    ]
    try:
        ski: bytes | None = certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
    except x509.ExtensionNotFound:
        ski = None
    issuer = tbs["issuer"]
    issuer_and_serial = der.sequence(issuer.dump(), tbs["serial_number"].dump())
    text = certificate.issuer.rfc4514_string()
    return _KeyIds(issuer, issuer_and_serial, text, certificate.serial_number, ski)


@dataclass(frozen=True)
class _Candidate:
    """A recipient info (or recipient encrypted key) that names one of our keys."""

    key: DecryptionKey
    recipient_id: RecipientId
    key_transport: str
    unwrap: Callable[[int], tuple[bytes, bool]]  # CEK size -> (CEK, ok)


def _same_issuer_and_serial(raw: bytes, ids: _KeyIds) -> bool:
    """Whether an encoded IssuerAndSerialNumber names the certificate: the same octets
    (the usual case), else the same serial and an equal Name (RFC 5280 §7.1 matching,
    for a peer that re-encoded the issuer)."""
    if raw == ids.issuer_and_serial:
        return True
    parsed = cms.IssuerAndSerialNumber.load(raw)
    return bool(parsed["serial_number"].native == ids.serial and parsed["issuer"] == ids.issuer)


def _match(kind: str, value: bytes, key: DecryptionKey) -> RecipientId | None:
    """The RecipientId when ``value`` (an encoded IssuerAndSerialNumber for
    ``issuer-serial``, the key identifier for ``ski``) names ``key``'s certificate."""
    ids = _key_ids(key.certificate)
    if kind == "issuer-serial":
        if _same_issuer_and_serial(value, ids):
            return RecipientId("issuer-serial", ids.issuer_text, ids.serial, ids.ski)
        return None
    if ids.ski is not None and value == ids.ski:
        return RecipientId("ski", ids.issuer_text, ids.serial, ids.ski)
    return None


def _ktri_candidates(
    buf: memoryview, info: ber.Tlv, keys: Sequence[DecryptionKey]
) -> list[_Candidate]:
    """KeyTransRecipientInfo (RFC 5652 §6.2.1), read directly: version, rid
    (issuerAndSerialNumber or [0] subjectKeyIdentifier), algorithm, encryptedKey."""
    parts = ber.children(buf, info)
    if len(parts) != 4:
        raise DecryptError("malformed KeyTransRecipientInfo")
    _, rid, algorithm, encrypted = parts
    if rid.is_(ber.UNIVERSAL, _SEQUENCE):
        kind, value = "issuer-serial", _raw(buf, rid)
    elif rid.is_(ber.CONTEXT, 0):
        kind, value = "ski", b"".join(ber.octet_string_chunks(buf, rid))
    else:
        raise DecryptError("malformed RecipientIdentifier")
    _expect(algorithm, ber.UNIVERSAL, _SEQUENCE, "keyEncryptionAlgorithm")
    algorithm_der, encrypted_key = _raw(buf, algorithm), _octets(buf, encrypted)
    found: list[_Candidate] = []
    for key in keys:
        private_key = key.private_key
        if not isinstance(private_key, rsa.RSAPrivateKey):
            continue
        recipient_id = _match(kind, value, key)
        if recipient_id is None:
            continue
        transport, _ = keytransport.padding_for(algorithm_der)
        unwrap = functools.partial(keytransport.unwrap, private_key, encrypted_key, algorithm_der)
        found.append(_Candidate(key, recipient_id, transport, unwrap))
    return found


def _originator_point(info: cms.KeyAgreeRecipientInfo, curve: ec.EllipticCurve) -> bytes:
    """The ephemeral public key of an ephemeral-static kari (RFC 5753 §3.1.1)."""
    originator = info["originator"]
    if originator.name != "originator_key":
        raise DecryptError("static-static ECDH (originator certificate) is not supported")
    public_key_info = originator.chosen
    algorithm = public_key_info["algorithm"]
    if algorithm["algorithm"].native != "ec":
        raise DecryptError("originator key is not an EC key")
    parameters = algorithm["parameters"]
    named = isinstance(parameters, asn1_keys.ECDomainParameters) and parameters.name == "named"
    if named and parameters.chosen.native != curve.name:
        raise DecryptError("originator key is on another curve")
    point = public_key_info["public_key"].native
    if not isinstance(point, bytes):
        raise DecryptError("malformed originator key")
    return point


def _kari_candidates(
    info: cms.KeyAgreeRecipientInfo, keys: Sequence[DecryptionKey]
) -> list[_Candidate]:
    found: list[_Candidate] = []
    algorithm = info["key_encryption_algorithm"]
    for encrypted in info["recipient_encrypted_keys"]:
        rid = encrypted["rid"]
        if rid.name == "issuer_and_serial_number":
            kind, value = "issuer-serial", bytes(rid.chosen.dump())
        else:
            kind, value = "ski", bytes(rid.chosen["subject_key_identifier"].native)
        for key in keys:
            private_key = key.private_key
            if not isinstance(private_key, ec.EllipticCurvePrivateKey):
                continue
            recipient_id = _match(kind, value, key)
            if recipient_id is None:
                continue
            wrap_algorithm = algorithm["parameters"]
            if not isinstance(wrap_algorithm, cms.KeyEncryptionAlgorithm):
                raise DecryptError(f"unsupported key agreement {algorithm['algorithm'].dotted}")
            unwrap = functools.partial(
                ecdh.unwrap,
                private_key,
                _originator_point(info, private_key.curve),
                str(algorithm["algorithm"].native),
                wrap_algorithm.dump(),
                str(wrap_algorithm["algorithm"].native),
                info["ukm"].native,
                encrypted["encrypted_key"].native,
            )
            found.append(_Candidate(key, recipient_id, ECDH, unwrap))
    return found


def _candidates(raw_infos: bytes, keys: Sequence[DecryptionKey]) -> list[_Candidate]:
    """Every (recipient info, key) pair that names one of ``keys``, in message order."""
    found: list[_Candidate] = []
    skipped: set[str] = set()
    view = memoryview(raw_infos)
    for info in ber.children(view, ber.read_tlv(view, 0, len(view))):
        if info.is_(ber.UNIVERSAL, _SEQUENCE):
            found.extend(_ktri_candidates(view, info, keys))
        elif info.is_(ber.CONTEXT, 1):
            kari = cms.RecipientInfo.load(_raw(view, info)).chosen
            found.extend(_kari_candidates(kari, keys))
        else:  # kekri [2], pwri [3], ori [4]: never used (module docstring)
            skipped.add(_OTHER_RECIPIENT_TYPES.get((info.tag_class, info.number), "unknown"))
    if not found:
        extra = f" (unsupported recipient types: {', '.join(sorted(skipped))})" if skipped else ""
        raise DecryptError(f"no recipient info for our keys{extra}")
    if len(found) > MAX_CANDIDATES:
        raise DecryptError(f"{len(found)} recipient infos name our keys (at most {MAX_CANDIDATES})")
    return found


# --------------------------------------------------------------------------- the whole


def _decrypt(buf: memoryview, keys: Sequence[DecryptionKey], accept_3des: bool) -> Decrypted:
    env = _parse_content_info(buf)
    params = _content_params(env, accept_3des)
    candidates = _candidates(env.recipient_infos, keys)
    size = params.spec.key_size
    unwrapped = [(candidate, *candidate.unwrap(size)) for candidate in candidates]
    usable = [(candidate, cek) for candidate, cek, ok in unwrapped if ok]
    # RFC 3218 §2.3: with no usable CEK, decrypt with the random one all the same
    attempts = usable or [(unwrapped[0][0], unwrapped[0][1])]
    for candidate, cek in attempts:
        content = _decrypt_content(params, cek, env)
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
