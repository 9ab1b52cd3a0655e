"""One SignerInfo of an S/MIME SignedData checked (RFC 5652 §5.3-§5.6, §11; RFC 8551 §2.1).

Role: ``check_signer`` checks one SignerInfo against the ``Context`` of its message (the
content, eContentType, the message's certificates, the validator) and returns its
outcome; ``validate`` then validates the signer certificate. ``Invalid`` is the
exception a failed check raises (``str()`` is the public reason); the message-level
steps of ``gateway.smime.verify`` raise it too. Imported by ``gateway.smime.verify``
only; imports ``gateway.smime.signer_certs``, never the reverse.

Checks, per signer (each failure makes the result invalid, with the first reason):
- the signer certificate is found by its sid (issuerAndSerialNumber or
  subjectKeyIdentifier) among the SignedData certificates;
- signed attributes (RFC 5652 §5.3-§5.4, §11): no duplicate attribute type; contentType
  present and equal to eContentType; messageDigest present and equal to the digest of the
  content; the signature is checked over the DER SET re-tagging of the octets received;
  without signed attributes the signature is over the content itself (eContentType must
  then be id-data);
- ESS signingCertificate(V2) (RFC 5035 §5.4), when present, must hash to the signer
  certificate (so a certificate cannot be swapped for another with the same key);
- algorithms: SHA-224/256/384/512 digests (MD5 and SHA-1 refused as weak, RFC 8551 §2.1);
  RSA PKCS#1 v1.5, RSASSA-PSS with its parameters (RFC 4056; trailer field 1, MGF1 only),
  ECDSA, Ed25519 and Ed448 (RFC 8419);
- the certificate validates for signing with the given ``ChainValidator`` at ``at``, the
  message's certificates (and ``trusted_intermediates``) offered as untrusted
  intermediates: the claimed signingTime is never used for that, it is the sender's
  word; no validator means no valid result (fail closed).

Robustness: no ``.native`` is ever called on a whole SignerInfo or attribute set
(asn1crypto raises on attributes it lacks a spec for, e.g. 1.3.6.1.4.1.311.16.4 from
NSS/Outlook): ``gateway.smime.attributes`` reads attributes one by one and ignores
unknown ones (and keeps smimeCapabilities and ESS values per encoding).

Security notes: only bad *input* is turned into an invalid outcome: an exception raised
by the validator (trusted code) propagates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, utils

from gateway.smime.attributes import (
    DIGEST_NAMES,
    ID_DATA,
    ParsedSignedAttributes,
    parse_signed_attributes,
    signed_attributes_set,
)
from gateway.smime.signer_certs import Certificates, KnownCertificate
from gateway.smime.types import ChainValidator, Purpose, SignerInfoResult, ValidationResult

ACCEPTED_DIGESTS = frozenset({"sha224", "sha256", "sha384", "sha512"})
WEAK_DIGESTS = frozenset({"md5", "sha1", "md2"})
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# signatureAlgorithm OIDs (RFC 3370, RFC 5754, RFC 5758, RFC 8419) -> (family, hash or None)
_SIGNATURE_ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "1.2.840.113549.1.1.1": ("rsassa_pkcs1v15", None),
    "1.2.840.113549.1.1.5": ("rsassa_pkcs1v15", "sha1"),
    "1.2.840.113549.1.1.14": ("rsassa_pkcs1v15", "sha224"),
    "1.2.840.113549.1.1.11": ("rsassa_pkcs1v15", "sha256"),
    "1.2.840.113549.1.1.12": ("rsassa_pkcs1v15", "sha384"),
    "1.2.840.113549.1.1.13": ("rsassa_pkcs1v15", "sha512"),
    "1.2.840.113549.1.1.10": ("rsassa_pss", None),
    "1.2.840.10045.2.1": ("ecdsa", None),  # id-ecPublicKey, written by some old signers
    "1.2.840.10045.4.1": ("ecdsa", "sha1"),
    "1.2.840.10045.4.3.1": ("ecdsa", "sha224"),
    "1.2.840.10045.4.3.2": ("ecdsa", "sha256"),
    "1.2.840.10045.4.3.3": ("ecdsa", "sha384"),
    "1.2.840.10045.4.3.4": ("ecdsa", "sha512"),
    "1.3.101.112": ("ed25519", None),
    "1.3.101.113": ("ed448", None),
}


class Invalid(Exception):
    """One signer (or the message) fails a check; ``str()`` is the public reason."""


# --------------------------------------------------------------------------- signatures


def _pss_padding(parameters: object) -> tuple[padding.PSS, str]:
    if not isinstance(parameters, algos.RSASSAPSSParams):
        raise Invalid("RSASSA-PSS without parameters")
    hash_name = str(parameters["hash_algorithm"]["algorithm"].native)
    mgf = parameters["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1":
        raise Invalid("RSASSA-PSS with a mask generation function other than MGF1")
    mgf_hash = str(mgf["parameters"]["algorithm"].native)
    if parameters["trailer_field"].native not in ("trailer_field_bc", 1):
        raise Invalid("RSASSA-PSS with an unknown trailer field")
    for name in (hash_name, mgf_hash):
        _check_digest_name(name)
    salt = int(parameters["salt_length"].native)
    return padding.PSS(mgf=padding.MGF1(_HASHES[mgf_hash]()), salt_length=salt), hash_name


def _check_digest_name(name: str) -> None:
    if name in WEAK_DIGESTS:
        raise Invalid(f"weak digest algorithm {name}")
    if name not in ACCEPTED_DIGESTS:
        raise Invalid(f"unsupported digest algorithm {name}")


def _check_signature(
    signer_info: cms.SignerInfo,
    algorithm: cms.SignedDigestAlgorithm,
    certificate: x509.Certificate,
    data: bytes,
    digest_name: str,
    prehashed: bytes | None,
) -> str:
    """Verify the signature over ``data`` (or over ``prehashed``, the content digest, when
    there are no signed attributes; ``algorithm``: its signatureAlgorithm, read once by
    the caller). Returns the algorithm family; raises ``Invalid``."""
    oid = str(algorithm["algorithm"].dotted)
    family, implied_hash = _SIGNATURE_ALGORITHMS.get(oid, (oid, None))
    hash_name = implied_hash or digest_name
    key = certificate.public_key()
    signature = bytes(signer_info["signature"].native)
    try:
        if family == "rsassa_pkcs1v15" or family == "rsassa_pss":
            if not isinstance(key, rsa.RSAPublicKey):
                raise Invalid("RSA signature but the certificate key is not RSA")
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if family == "rsassa_pss":
                pad, hash_name = _pss_padding(algorithm["parameters"])
            _check_digest_name(hash_name)
            chosen = _prehash_or_hash(hash_name, prehashed, digest_name)
            key.verify(signature, prehashed or data, pad, chosen)
        elif family == "ecdsa":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise Invalid("ECDSA signature but the certificate key is not EC")
            _check_digest_name(hash_name)
            chosen = _prehash_or_hash(hash_name, prehashed, digest_name)
            key.verify(signature, prehashed or data, ec.ECDSA(chosen))
        elif family == "ed25519":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise Invalid("Ed25519 signature but the certificate key is not Ed25519")
            key.verify(signature, data)
        elif family == "ed448":
            if not isinstance(key, ed448.Ed448PublicKey):
                raise Invalid("Ed448 signature but the certificate key is not Ed448")
            key.verify(signature, data)
        else:
            raise Invalid(f"unsupported signature algorithm {oid}")
    except InvalidSignature:
        raise Invalid("the signature does not verify") from None
    except (UnsupportedAlgorithm, ValueError, TypeError) as error:
        raise Invalid(f"signature not checkable: {type(error).__name__}") from None
    return family


def _prehash_or_hash(
    hash_name: str, prehashed: bytes | None, digest_name: str
) -> hashes.HashAlgorithm | utils.Prehashed:
    algorithm = _HASHES[hash_name]()
    if prehashed is None:
        return algorithm
    if hash_name != digest_name:
        raise Invalid("signature hash differs from the digest algorithm")
    return utils.Prehashed(algorithm)


# --------------------------------------------------------------------------- one signer


@dataclass
class Context:
    """What every signer of one message is checked against."""

    content: bytes | memoryview
    econtent_type: str
    certificates: Certificates
    validator: ChainValidator | None
    trusted_intermediates: Sequence[x509.Certificate]
    at: datetime | None
    digests: dict[str, bytes] = field(default_factory=dict)

    def digest(self, name: str) -> bytes:
        if name not in self.digests:
            self.digests[name] = hashlib.new(name, self.content).digest()
        return self.digests[name]


@dataclass
class _SignerOutcome:
    """Mutable accumulator turned into a ``SignerInfoResult``."""

    reason: str = ""
    certificate: x509.Certificate | None = None
    validation: ValidationResult | None = None
    digest_algorithm: str = ""
    signature_algorithm: str = ""
    attributes: ParsedSignedAttributes | None = None
    addresses: tuple[str, ...] = ()  # the signer certificate's (``certificate_addresses``)

    def result(self) -> SignerInfoResult:
        attrs = self.attributes
        return SignerInfoResult(
            signature_valid=not self.reason,
            reason=self.reason,
            certificate=self.certificate,
            certificate_validation=self.validation,
            digest_algorithm=self.digest_algorithm,
            signature_algorithm=self.signature_algorithm,
            signing_time=attrs.signing_time if attrs else None,
            capabilities=attrs.capabilities if attrs and not self.reason else None,
            email_addresses=self.addresses if self.certificate else (),
        )


def _check_ess(attributes: ParsedSignedAttributes, signer: KnownCertificate) -> None:
    for cert_id in attributes.signing_certificates:
        if cert_id.hash_algorithm not in _HASHES:
            raise Invalid(f"signingCertificate uses unsupported {cert_id.hash_algorithm}")
        if signer.digest(cert_id.hash_algorithm) != cert_id.cert_hash:
            raise Invalid("signingCertificate does not name the signer certificate")


def check_signer(signer_info: cms.SignerInfo, context: Context) -> _SignerOutcome:
    outcome = _SignerOutcome()
    try:
        _check_signer_into(signer_info, context, outcome)
    except Invalid as problem:
        outcome.reason = str(problem)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as error:
        outcome.reason = f"malformed SignerInfo ({type(error).__name__})"
    return outcome


def _check_signer_into(
    signer_info: cms.SignerInfo, context: Context, outcome: _SignerOutcome
) -> None:
    digest_oid = str(signer_info["digest_algorithm"]["algorithm"].dotted)
    digest_name = DIGEST_NAMES.get(digest_oid, digest_oid)
    outcome.digest_algorithm = digest_name
    algorithm = signer_info["signature_algorithm"]
    outcome.signature_algorithm = _family_name(algorithm)
    known = context.certificates.find(signer_info["sid"])
    if known is None:
        raise Invalid("the signer certificate is not in the message")
    certificate = known.certificate
    outcome.certificate = certificate
    outcome.addresses = known.addresses
    _check_digest_name(digest_name)
    content_digest = context.digest(digest_name)
    signed_attrs = signer_info["signed_attrs"]
    if isinstance(signed_attrs, core.Void):
        if context.econtent_type != ID_DATA:
            raise Invalid("no signed attributes over a content that is not id-data")
        prehashed = None if outcome.signature_algorithm.startswith("ed") else content_digest
        data = bytes(context.content) if prehashed is None else b""
        outcome.signature_algorithm = _check_signature(
            signer_info, algorithm, certificate, data, digest_name, prehashed
        )
        return
    attributes = parse_signed_attributes(signed_attrs.contents)
    outcome.attributes = attributes
    _check_attributes(attributes, context, content_digest)
    _check_ess(attributes, known)
    signed = signed_attributes_set(signed_attrs.contents)
    outcome.signature_algorithm = _check_signature(
        signer_info, algorithm, certificate, signed, digest_name, None
    )


def _family_name(algorithm: cms.SignedDigestAlgorithm) -> str:
    oid = str(algorithm["algorithm"].dotted)
    return _SIGNATURE_ALGORITHMS.get(oid, (oid, None))[0]


def _check_attributes(
    attributes: ParsedSignedAttributes, context: Context, content_digest: bytes
) -> None:
    if attributes.problems:
        raise Invalid(attributes.problems[0])
    if attributes.content_type is None:
        raise Invalid("signed attributes without contentType")
    if attributes.content_type != context.econtent_type:
        raise Invalid("contentType attribute differs from the encapsulated content type")
    if attributes.message_digest is None:
        raise Invalid("signed attributes without messageDigest")
    if attributes.message_digest != content_digest:
        raise Invalid("message digest mismatch: the content was altered")


def validate(outcome: _SignerOutcome, context: Context) -> None:
    if outcome.reason or outcome.certificate is None or context.validator is None:
        return
    untrusted = [*context.certificates.others(outcome.certificate), *context.trusted_intermediates]
    outcome.validation = context.validator.validate(
        outcome.certificate, untrusted, Purpose.SMIME_SIGN, context.at
    )
