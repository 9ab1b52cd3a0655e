"""OCSP request building and response checking without I/O (RFC 6960).

Role: ``build_request`` makes the DER request for one certificate; ``evaluate_response``
decides what a DER response proves about it, or raises ``OcspError`` saying why the
response must be ignored. The HTTP exchange and the caching are in
``gateway.smime.revocation``. cryptography parses OCSP but verifies nothing (measured on
cryptography 50): every check below is ours.

The CertID uses SHA-1 (RFC 6960 §4.1.1 allows any hash, but SHA-1 is what deployed
responders index and what RFC 5019 §2.1.1 mandates for lightweight responders; it is a
lookup key there, not a signature, so collision resistance is not what protects us).

A response is accepted only when (RFC 6960 §3.2, §4.2.2.2), else ``OcspError``:
1. its responseStatus is successful;
2. it holds a SingleResponse whose CertID matches ours: hash of the issuer's name and of
   the issuer's public key (with the hash algorithm that response used), and the serial;
3. its signature over tbsResponseData verifies with the key of an authorised responder:
   the issuing CA itself, or a delegate certificate carried in the response that the CA
   signed directly, with EKU id-kp-OCSPSigning, valid now (with ``skew``); the
   responderID must name that signer. A locally configured trusted responder
   (§4.2.2.2 case 1) is not supported. MD5 and SHA-1 signatures are refused;
4. thisUpdate is not in the future (beyond ``skew``) and nextUpdate, when present, is not
   past (beyond ``skew``); without nextUpdate the response must be younger than
   ``max_age`` (§4.2.2.1: "newer information is available all the time");
5. a nonce, when the response echoes one, equals the one we sent (RFC 8954); a
   response without a nonce is accepted (pre-produced responses carry none).

A forged response (other key), a stale one, one for another serial, or one signed by a
delegate without OCSPSigning are therefore all "no answer"; the caller falls back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from asn1crypto import keys as asn1_keys
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

WEAK_HASHES = ("md5", "sha1")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class OcspError(ValueError):
    """The response proves nothing about the certificate; ``str()`` says why."""


class OcspState(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # the responder does not know the certificate


@dataclass(frozen=True)
class OcspVerdict:
    """What an accepted response says about the certificate."""

    state: OcspState
    this_update: datetime
    next_update: datetime | None
    revoked_at: datetime | None = None
    reason: str = ""


def build_request(
    certificate: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None
) -> bytes:
    """DER OCSPRequest for ``certificate`` (SHA-1 CertID), with an optional nonce."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1())  # noqa: S303
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def evaluate_response(
    data: bytes,
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None,
    now: datetime,
    skew: timedelta,
    max_age: timedelta,
) -> OcspVerdict:
    """Check ``data`` against rules 1-5 of the module docstring; raise ``OcspError``."""
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        raise OcspError("not a readable OCSP response") from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"responder answered {response.response_status.name.lower()}")
    try:
        single = _matching_single_response(response, certificate, issuer)
        signer = _authorised_signer(response, issuer, now, skew)
        _check_signature(response, signer, data)
        _check_nonce(response, nonce)
    except (ValueError, UnsupportedAlgorithm) as error:
        if isinstance(error, OcspError):
            raise
        raise OcspError(f"malformed OCSP response ({error})") from None
    return _verdict(single, now, skew, max_age)


def _public_key_bits(certificate: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING value (what CertID and ResponderID byKey hash)."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bits: bytes = asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:]
    return bits


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    context = hashes.Hash(algorithm)
    context.update(data)
    return context.finalize()


def _matching_single_response(
    response: ocsp.OCSPResponse, certificate: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse:
    name_der = certificate.issuer.public_bytes()
    key_bits = _public_key_bits(issuer)
    for single in response.responses:
        algorithm = single.hash_algorithm
        if (
            single.serial_number == certificate.serial_number
            and single.issuer_name_hash == _digest(algorithm, name_der)
            and single.issuer_key_hash == _digest(algorithm, key_bits)
        ):
            return single
    raise OcspError("response does not answer for this certificate (CertID mismatch)")


def _authorised_signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime, skew: timedelta
) -> x509.Certificate:
    """The issuer, or a delegate it certified for OCSP signing (RFC 6960 §4.2.2.2)."""
    if _responder_id_names(response, issuer):
        return issuer
    for candidate in response.certificates:
        if _responder_id_names(response, candidate):
            _check_delegate(candidate, issuer, now, skew)
            return candidate
    raise OcspError("response signed by an unknown responder")


def _responder_id_names(response: ocsp.OCSPResponse, certificate: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == certificate.subject
    key_hash = _digest(hashes.SHA1(), _public_key_bits(certificate))  # noqa: S303 - RFC 6960 byKey
    return response.responder_key_hash == key_hash


def _check_delegate(
    delegate: x509.Certificate, issuer: x509.Certificate, now: datetime, skew: timedelta
) -> None:
    if delegate.issuer != issuer.subject:
        raise OcspError("delegated responder not issued by the certificate's CA")
    try:
        delegate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise OcspError("delegated responder certificate not signed by the CA") from None
    try:
        usages = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise OcspError("delegated responder lacks EKU id-kp-OCSPSigning") from None
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        raise OcspError("delegated responder lacks EKU id-kp-OCSPSigning")
    if not delegate.not_valid_before_utc - skew <= now <= delegate.not_valid_after_utc + skew:
        raise OcspError("delegated responder certificate is not valid now")


def _check_signature(response: ocsp.OCSPResponse, signer: x509.Certificate, data: bytes) -> None:
    algorithm, rsa_padding = _signature_algorithm(response, data)
    if algorithm is not None and algorithm.name in WEAK_HASHES:
        raise OcspError(f"response signed with {algorithm.name.upper()}, refused")
    key = signer.public_key()
    signature, tbs = response.signature, response.tbs_response_bytes
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, tbs, rsa_padding, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, tbs, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, tbs)
        else:
            raise OcspError("responder key type not supported")
    except InvalidSignature:
        raise OcspError("response signature does not verify (forged or damaged)") from None


def _signature_algorithm(
    response: ocsp.OCSPResponse, data: bytes
) -> tuple[hashes.HashAlgorithm | None, padding.AsymmetricPadding]:
    """Hash and RSA padding of the response signature. cryptography does not know
    RSASSA-PSS for OCSP responses (measured: UnsupportedAlgorithm): its parameters
    (RFC 4055 §3.1) are read here with asn1crypto."""
    if response.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        return response.signature_hash_algorithm, padding.PKCS1v15()
    basic = asn1_ocsp.OCSPResponse.load(data)["response_bytes"]["response"].parsed
    params = basic["signature_algorithm"]["parameters"]
    digest = params["hash_algorithm"]["algorithm"].native
    mgf_digest = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
    if digest not in _HASHES or mgf_digest not in _HASHES:
        raise OcspError("RSASSA-PSS parameters not supported")
    mgf = padding.MGF1(_HASHES[mgf_digest]())
    return _HASHES[digest](), padding.PSS(mgf, int(params["salt_length"].native))


def _check_nonce(response: ocsp.OCSPResponse, nonce: bytes | None) -> None:
    try:
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return
    if nonce is not None and echoed != nonce:
        raise OcspError("response nonce does not match the request (replayed?)")


def _verdict(
    single: ocsp.OCSPSingleResponse, now: datetime, skew: timedelta, max_age: timedelta
) -> OcspVerdict:
    this_update, next_update = single.this_update_utc, single.next_update_utc
    if this_update > now + skew:
        raise OcspError("response thisUpdate is in the future")
    if next_update is not None and now > next_update + skew:
        raise OcspError(f"stale response (nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ})")
    if next_update is None and now - this_update > max_age:
        raise OcspError("stale response (no nextUpdate and thisUpdate too old)")
    status = single.certificate_status
    if status is ocsp.OCSPCertStatus.GOOD:
        return OcspVerdict(OcspState.GOOD, this_update, next_update)
    if status is ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason
        return OcspVerdict(
            OcspState.REVOKED,
            this_update,
            next_update,
            revoked_at=single.revocation_time_utc,
            reason=reason.value if reason is not None else "unspecified",
        )
    return OcspVerdict(OcspState.UNKNOWN, this_update, next_update)
