"""The recipient infos of an (Auth)EnvelopedData matched against our keys, each with the
unwrapping of its content-encryption key (RFC 5652 §6.2; RFC 5753 for ECDH).

Role: the public types ``DecryptionKey`` (a private key with the certificate that names
it) and ``RecipientId`` (how the message named the recipient whose key opened it), and
``recipient_candidates``: every (recipient info, key) pair that names one of our keys,
in message order, each with its unwrap function. Key transport: RSA PKCS#1 v1.5,
RSA-OAEP with SHA-1/224/256/384/512 and a label (``keytransport``), ECDH
ephemeral-static (RFC 5753, ``ecdh``); recipients named by issuerAndSerialNumber or
subjectKeyIdentifier. Among several keys of one address (renewed certificates: queued
mail must stay readable) the key is chosen by the RecipientIdentifier.
KEKRecipientInfo, PasswordRecipientInfo and OtherRecipientInfo are never used: a
message with no other recipient info for our keys is refused. ``gateway.smime.decrypt``
imports this module, never the reverse.

Parsing: KeyTransRecipientInfos are read with ``ber``; KeyAgreeRecipientInfos, OAEP
parameters (cached per encoding) and re-encoded issuer names are parsed with
asn1crypto plus ``gateway.smime.asn1``'s registrations.

Invariants: a message naming our keys more than ``MAX_CANDIDATES`` times is refused
(each match costs a private-key operation). RFC 3218 §2.3 (Bleichenbacher
countermeasure): a failure of the key decryption (RSA padding, OAEP, key unwrap, wrong
CEK length) is not reported by the unwrap function: it gives a random CEK instead
(``keytransport.unwrap``, ``ecdh.unwrap``), so the caller decrypts the content anyway.

Trust level: uses the recipients' private keys (the secure agent); no I/O, no logging.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asn1crypto import cms
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import gateway.smime.asn1  # noqa: F401 - registers GCMParameters and the ECDH schemes
from gateway.smime import ber, der, ecdh, keytransport
from gateway.smime.algorithms import ECDH
from gateway.smime.enveloped_data import SEQUENCE, expect, octets, tlv_bytes
from gateway.smime.types import DecryptError

# A message naming our keys more often than this is hostile: each match costs a private-key
# operation (a legitimate one names each of our certificates once).
MAX_CANDIDATES = 8

_OTHER_RECIPIENT_TYPES = {
    (ber.CONTEXT, 2): "kekri",
    (ber.CONTEXT, 3): "pwri",
    (ber.CONTEXT, 4): "ori",
}


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
    if rid.is_(ber.UNIVERSAL, SEQUENCE):
        kind, value = "issuer-serial", tlv_bytes(buf, rid)
    elif rid.is_(ber.CONTEXT, 0):
        kind, value = "ski", b"".join(ber.octet_string_chunks(buf, rid))
    else:
        raise DecryptError("malformed RecipientIdentifier")
    expect(algorithm, ber.UNIVERSAL, SEQUENCE, "keyEncryptionAlgorithm")
    algorithm_der, encrypted_key = tlv_bytes(buf, algorithm), octets(buf, encrypted)
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


def recipient_candidates(raw_infos: bytes, keys: Sequence[DecryptionKey]) -> list[_Candidate]:
    """Every (recipient info, key) pair that names one of ``keys``, in message order."""
    found: list[_Candidate] = []
    skipped: set[str] = set()
    view = memoryview(raw_infos)
    for info in ber.children(view, ber.read_tlv(view, 0, len(view))):
        if info.is_(ber.UNIVERSAL, SEQUENCE):
            found.extend(_ktri_candidates(view, info, keys))
        elif info.is_(ber.CONTEXT, 1):
            kari = cms.RecipientInfo.load(tlv_bytes(view, info)).chosen
            found.extend(_kari_candidates(kari, keys))
        else:  # kekri [2], pwri [3], ori [4]: never used (module docstring)
            skipped.add(_OTHER_RECIPIENT_TYPES.get((info.tag_class, info.number), "unknown"))
    if not found:
        extra = f" (unsupported recipient types: {', '.join(sorted(skipped))})" if skipped else ""
        raise DecryptError(f"no recipient info for our keys{extra}")
    if len(found) > MAX_CANDIDATES:
        raise DecryptError(f"{len(found)} recipient infos name our keys (at most {MAX_CANDIDATES})")
    return found
