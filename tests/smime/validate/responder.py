"""Test doubles for revocation: an OCSP responder and CRL builders, made with cryptography.

``OcspResponder`` is a callable ``request DER -> response DER`` to plug into the loopback
HTTP server's OCSP handler. It answers as a real responder would (the CertID of the
request, the nonce echoed) and can be told to misbehave the ways the validator must
resist: forged (signed by a key that is not the CA's), stale, for another serial,
signed by a delegate (with or without id-kp-OCSPSigning), with a wrong nonce, or
"unknown". It records the requests it saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.pki.builders import PrivateKey


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class OcspResponder:
    """An OCSP responder for one CA (``issuer``); see the module docstring."""

    issuer: x509.Certificate
    issuer_key: PrivateKey
    revoked: dict[int, datetime] = field(default_factory=dict)
    unknown: set[int] = field(default_factory=set)
    # misbehaviours
    signer: x509.Certificate | None = None  # delegate certificate (None: the CA signs)
    signer_key: PrivateKey | None = None
    forge_with: rsa.RSAPrivateKey | None = None  # re-sign with this key, naming the CA
    this_update_shift: timedelta = timedelta(minutes=-1)
    validity: timedelta | None = timedelta(hours=4)  # None: no nextUpdate
    serial_shift: int = 0  # answer for serial + shift
    nonce_override: bytes | None = None
    echo_nonce: bool = True
    status: ocsp.OCSPResponseStatus = ocsp.OCSPResponseStatus.SUCCESSFUL
    requests: list[ocsp.OCSPRequest] = field(default_factory=list)

    def __call__(self, request_der: bytes) -> bytes:
        request = ocsp.load_der_ocsp_request(request_der)
        self.requests.append(request)
        if self.status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            return ocsp.OCSPResponseBuilder.build_unsuccessful(self.status).public_bytes(
                serialization.Encoding.DER
            )
        return self._response(request).public_bytes(serialization.Encoding.DER)

    def _response(self, request: ocsp.OCSPRequest) -> ocsp.OCSPResponse:
        serial = request.serial_number + self.serial_shift
        this_update = now() + self.this_update_shift
        next_update = this_update + self.validity if self.validity is not None else None
        if serial in self.revoked:
            status, revoked_at = ocsp.OCSPCertStatus.REVOKED, self.revoked[serial]
            reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise
        elif serial in self.unknown:
            status, revoked_at, reason = ocsp.OCSPCertStatus.UNKNOWN, None, None
        else:
            status, revoked_at, reason = ocsp.OCSPCertStatus.GOOD, None, None
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash,
            issuer_key_hash=request.issuer_key_hash,
            serial_number=serial,
            algorithm=request.hash_algorithm,
            cert_status=status,
            this_update=this_update,
            next_update=next_update,
            revocation_time=revoked_at,
            revocation_reason=reason,
        )
        signer_cert = self.signer or self.issuer
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer_cert)
        if self.signer is not None:
            builder = builder.certificates([self.signer])
        nonce = self._nonce(request)
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        signed = builder.sign(self.signer_key or self.issuer_key, hashes.SHA256())
        if self.forge_with is None:
            return signed
        return _resigned(signed, self.forge_with)

    def _nonce(self, request: ocsp.OCSPRequest) -> bytes | None:
        if self.nonce_override is not None:
            return self.nonce_override
        if not self.echo_nonce:
            return None
        try:
            return request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            return None


def _resigned(response: ocsp.OCSPResponse, key: rsa.RSAPrivateKey) -> ocsp.OCSPResponse:
    """The same response with its signature replaced by one made with ``key`` (a forger
    who copies a genuine response but cannot use the CA's key)."""
    parsed = asn1_ocsp.OCSPResponse.load(response.public_bytes(serialization.Encoding.DER))
    basic = parsed["response_bytes"]["response"].parsed
    tbs = basic["tbs_response_data"].dump()
    basic["signature"] = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    parsed["response_bytes"]["response"] = asn1_ocsp.BasicOCSPResponse.load(basic.dump(force=True))
    return ocsp.load_der_ocsp_response(parsed.dump(force=True))


def delegate_certificate(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    eku: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.OCSP_SIGNING,),
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A responder certificate issued directly by ``issuer`` (EKU as given)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OCSP DEV")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - timedelta(hours=1))
        .not_valid_after(now() + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def build_crl(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    revoked: Sequence[int] = (),
    *,
    number: int = 1,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    reason: x509.ReasonFlags | None = None,
) -> bytes:
    """A DER CRL of ``issuer`` listing ``revoked`` serials."""
    this_update = this_update or now() - timedelta(minutes=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update or this_update + timedelta(days=7))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    for serial in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update)
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
