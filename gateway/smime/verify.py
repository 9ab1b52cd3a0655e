"""S/MIME signature verification (RFC 8551 §3.5, RFC 5652 §5.6, RFC 8550 §3).

Role: ``verify(entity, ...)`` takes a signed MIME entity, multipart/signed (detached) or
application/pkcs7-mime; smime-type=signed-data (opaque), and returns a ``VerifyResult``
describing every signer. It never raises on bad input: malformed MIME, CMS or ASN.1
gives ``VerifyResult(valid=False, reason=...)``.

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
- for multipart/signed the micalg parameter must list exactly the signers' digests
  (RFC 8551 §3.5.3; "sha256" and "sha-256" spellings both accepted) and the protocol must
  be application/(x-)pkcs7-signature (RFC 1847 §2.1);
- the certificate validates for signing with the given ``ChainValidator`` at ``at``, the
  message's certificates (and ``trusted_intermediates``) offered as untrusted
  intermediates: the claimed signingTime is never used for that, it is the sender's
  word; no validator means no valid result (fail closed).

Binding (RFC 8550 §3): the From address given, and the From of the protected header
fields / wrapped inner message when there is one (that is what the reader sees), must
each equal an address of a signer whose signature and certificate are valid: rfc822Name
or SmtpUTF8Mailbox (RFC 8398) SANs, or the emailAddress of the subject DN. Local parts
compare exactly, domains case-insensitively (RFC 5321 §2.4, RFC 5280 §7.5). With
``from_address=None`` the entity's own From field is used, if it has one.

Robustness: the outer structure is parsed with asn1crypto, but no ``.native`` is ever
called on a whole SignerInfo or attribute set (asn1crypto raises on attributes it lacks a
spec for, e.g. 1.3.6.1.4.1.311.16.4 from NSS/Outlook): ``gateway.smime.attributes`` reads
attributes one by one and ignores unknown ones. Work is bounded: at most 16 signers and
100 certificates are looked at.

What the signed content says about itself is reported too: a wrapped message
(message/rfc822, RFC 8551 §3.1, Direct) gives ``inner_message``, its header fields in
``protected_headers`` and ``extra["wrapped"]``; an RFC 9788 Cryptographic Payload
(``hp="clear"``/``"cipher"`` on its Content-Type) gives its header fields in
``protected_headers`` and ``extra["hp"]``. Values are unfolded but not RFC 2047-decoded.

Caches (issue 7 Speed: a correspondent sends the same chain and attributes with every
message): the certificates of a message are kept parsed per encoding of the whole
certificates field (``CERTIFICATE_CACHE_SIZE`` fields of at most
``MAX_CACHED_CERTIFICATES`` octets, least recently used first: hostile fields cannot
fill memory; measured, 256 fields of 32 KiB of small certificates pinned 45 MiB, so the
bound is 64 fields of 16 KiB, about 6 MiB per worker at worst, while a real chain of 2
to 4 RSA certificates is under 8 KiB) and, for those, the ESS hash of the signer
certificate per certificate (its whole DER); ``gateway.smime.attributes`` keeps
smimeCapabilities and ESS values per encoding. Each cached value is a function of those
exact octets alone and a miss runs the uncached code, so a cache never accepts what the
uncached path refuses; nothing that depends on time or revocation is cached here (the
validator's own cache handles that). ``verify_parsed`` takes an entity the caller
already parsed (the inbound agent parses each message once).

Security notes: the content returned is exactly what the signature covers (the detached
part's bytes, or eContent); a caller must deliver that and nothing around it. Only bad
*input* is turned into an invalid result: an exception raised by the validator (trusted
code) propagates.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import getaddresses

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding

import gateway.smime.asn1  # noqa: F401 - registers the attribute specs asn1crypto lacks
from gateway.log import get_logger
from gateway.smime import header_protection, mime, smime_parts, transfer
from gateway.smime.attributes import (
    DIGEST_NAMES,
    ID_DATA,
    ParsedSignedAttributes,
    parse_signed_attributes,
    signed_attributes_set,
)
from gateway.smime.certnames import addresses_match, certificate_addresses
from gateway.smime.types import (
    ChainValidator,
    MalformedMessage,
    Purpose,
    SignerInfoResult,
    ValidationResult,
    VerifyResult,
)

_log = get_logger("smime.verify")

MAX_SIGNERS = 16
MAX_CERTIFICATES = 100
CERTIFICATE_CACHE_SIZE = 64  # certificate fields kept parsed (and ESS hashes kept)
MAX_CACHED_CERTIFICATES = 16 * 1024  # octets of a certificates field worth keeping
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


class _Invalid(Exception):
    """One signer (or the message) fails a check; ``str()`` is the public reason."""


# --------------------------------------------------------------------------- helpers


def _normalise_micalg(value: str) -> str:
    return value.strip().lower().replace("-", "")


def _from_addresses(values: Sequence[str]) -> list[str]:
    return [address for _, address in getaddresses(list(values)) if address]


@dataclass
class _Certificates:
    """The SignedData certificates (X.509 ones; other choices are skipped)."""

    entries: list[x509.Certificate] = field(default_factory=list)
    cached: bool = False  # the entries are kept by the certificate set cache

    @classmethod
    def from_signed_data(cls, signed_data: cms.SignedData) -> _Certificates:
        choices = signed_data["certificates"]
        if isinstance(choices, core.Void):
            return cls()
        entries, cached = _CERTIFICATE_SETS.certificates(choices)
        return cls(list(entries), cached)

    def hash_of(self, certificate: x509.Certificate, algorithm: str) -> bytes:
        """The hash of an entry's DER (kept with the entries when they are cached)."""
        if self.cached:
            return _cached_certificate_hash(certificate, algorithm)
        return _certificate_hash(certificate, algorithm)

    def find(self, sid: cms.SignerIdentifier) -> x509.Certificate | None:
        for certificate in self.entries:
            if _matches_sid(certificate, sid):
                return certificate
        return None

    def others(self, certificate: x509.Certificate) -> list[x509.Certificate]:
        return [cert for cert in self.entries if cert != certificate]


def _usable_certificates(choices: cms.CertificateSet) -> tuple[x509.Certificate, ...]:
    """The X.509 certificates among the first ``MAX_CERTIFICATES`` choices."""
    found: list[x509.Certificate] = []
    for index, choice in enumerate(choices):
        if index >= MAX_CERTIFICATES:
            break
        if choice.name != "certificate":
            continue
        certificate = _load_certificate(bytes(choice.chosen.dump()))
        if certificate is not None:
            found.append(certificate)
    return tuple(found)


class _CertificateSetCache:
    """``_usable_certificates`` per encoding of the whole certificates field: a
    correspondent sends the same chain with every message, and the result depends on
    those octets alone (a miss runs the same code on the message's own parse; nothing
    is cached when it raises). Least recently used entries go first; thread-safe."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[x509.Certificate, ...]] = OrderedDict()

    def certificates(
        self, choices: cms.CertificateSet
    ) -> tuple[tuple[x509.Certificate, ...], bool]:
        """(the usable certificates, whether they are kept in the cache): a field over
        ``MAX_CACHED_CERTIFICATES`` octets is read each time, so that hostile ones
        cannot fill memory."""
        key = bytes(choices.dump())
        if len(key) > MAX_CACHED_CERTIFICATES:
            return _usable_certificates(choices), False
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found, True
        found = _usable_certificates(choices)
        with self._lock:
            self._entries[key] = found
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return found, True


_CERTIFICATE_SETS = _CertificateSetCache(CERTIFICATE_CACHE_SIZE)


def _load_certificate(encoded: bytes) -> x509.Certificate | None:
    """The certificate of these exact DER octets, None when it is unusable."""
    try:
        tbs = asn1_x509.Certificate.load(encoded)["tbs_certificate"]
        if tbs["serial_number"].native <= 0:
            return None  # RFC 5280 §4.1.2.2; cryptography would warn, then refuse
        return x509.load_der_x509_certificate(encoded)
    except (ValueError, TypeError, KeyError, x509.InvalidVersion):
        return None  # an unparsable certificate is skipped; its signer will not match


def _matches_sid(certificate: x509.Certificate, sid: cms.SignerIdentifier) -> bool:
    """RFC 5652 §5.3: issuerAndSerialNumber (names compared as RFC 5280 §7.1 says when
    their encodings differ) or subjectKeyIdentifier."""
    if sid.name == "issuer_and_serial_number":
        wanted = sid.chosen
        if certificate.serial_number != wanted["serial_number"].native:
            return False
        issuer = certificate.issuer.public_bytes()
        return issuer == wanted["issuer"].dump() or bool(
            asn1_x509.Name.load(issuer) == wanted["issuer"]
        )
    if sid.name == "subject_key_identifier":
        try:
            extension = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except (x509.ExtensionNotFound, ValueError):
            return False
        return bool(extension.value.digest == sid.chosen.native)
    return False


# --------------------------------------------------------------------------- signatures


def _pss_padding(parameters: object) -> tuple[padding.PSS, str]:
    if not isinstance(parameters, algos.RSASSAPSSParams):
        raise _Invalid("RSASSA-PSS without parameters")
    hash_name = str(parameters["hash_algorithm"]["algorithm"].native)
    mgf = parameters["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1":
        raise _Invalid("RSASSA-PSS with a mask generation function other than MGF1")
    mgf_hash = str(mgf["parameters"]["algorithm"].native)
    if parameters["trailer_field"].native not in ("trailer_field_bc", 1):
        raise _Invalid("RSASSA-PSS with an unknown trailer field")
    for name in (hash_name, mgf_hash):
        _check_digest_name(name)
    salt = int(parameters["salt_length"].native)
    return padding.PSS(mgf=padding.MGF1(_HASHES[mgf_hash]()), salt_length=salt), hash_name


def _check_digest_name(name: str) -> None:
    if name in WEAK_DIGESTS:
        raise _Invalid(f"weak digest algorithm {name}")
    if name not in ACCEPTED_DIGESTS:
        raise _Invalid(f"unsupported digest algorithm {name}")


def _check_signature(
    signer_info: cms.SignerInfo,
    certificate: x509.Certificate,
    data: bytes,
    digest_name: str,
    prehashed: bytes | None,
) -> str:
    """Verify the signature over ``data`` (or over ``prehashed``, the content digest, when
    there are no signed attributes). Returns the algorithm family; raises ``_Invalid``."""
    algorithm = signer_info["signature_algorithm"]
    oid = str(algorithm["algorithm"].dotted)
    family, implied_hash = _SIGNATURE_ALGORITHMS.get(oid, (oid, None))
    hash_name = implied_hash or digest_name
    key = certificate.public_key()
    signature = bytes(signer_info["signature"].native)
    try:
        if family == "rsassa_pkcs1v15" or family == "rsassa_pss":
            if not isinstance(key, rsa.RSAPublicKey):
                raise _Invalid("RSA signature but the certificate key is not RSA")
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if family == "rsassa_pss":
                pad, hash_name = _pss_padding(algorithm["parameters"])
            _check_digest_name(hash_name)
            chosen = _prehash_or_hash(hash_name, prehashed, digest_name)
            key.verify(signature, prehashed or data, pad, chosen)
        elif family == "ecdsa":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise _Invalid("ECDSA signature but the certificate key is not EC")
            _check_digest_name(hash_name)
            chosen = _prehash_or_hash(hash_name, prehashed, digest_name)
            key.verify(signature, prehashed or data, ec.ECDSA(chosen))
        elif family == "ed25519":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise _Invalid("Ed25519 signature but the certificate key is not Ed25519")
            key.verify(signature, data)
        elif family == "ed448":
            if not isinstance(key, ed448.Ed448PublicKey):
                raise _Invalid("Ed448 signature but the certificate key is not Ed448")
            key.verify(signature, data)
        else:
            raise _Invalid(f"unsupported signature algorithm {oid}")
    except InvalidSignature:
        raise _Invalid("the signature does not verify") from None
    except (UnsupportedAlgorithm, ValueError, TypeError) as error:
        raise _Invalid(f"signature not checkable: {type(error).__name__}") from None
    return family


def _prehash_or_hash(
    hash_name: str, prehashed: bytes | None, digest_name: str
) -> hashes.HashAlgorithm | utils.Prehashed:
    algorithm = _HASHES[hash_name]()
    if prehashed is None:
        return algorithm
    if hash_name != digest_name:
        raise _Invalid("signature hash differs from the digest algorithm")
    return utils.Prehashed(algorithm)


# --------------------------------------------------------------------------- one signer


@dataclass
class _Context:
    """What every signer of one message is checked against."""

    content: bytes | memoryview
    econtent_type: str
    certificates: _Certificates
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
            email_addresses=certificate_addresses(self.certificate) if self.certificate else (),
        )


def _check_ess(
    attributes: ParsedSignedAttributes,
    certificate: x509.Certificate,
    certificates: _Certificates,
) -> None:
    for cert_id in attributes.signing_certificates:
        if cert_id.hash_algorithm not in _HASHES:
            raise _Invalid(f"signingCertificate uses unsupported {cert_id.hash_algorithm}")
        if certificates.hash_of(certificate, cert_id.hash_algorithm) != cert_id.cert_hash:
            raise _Invalid("signingCertificate does not name the signer certificate")


def _certificate_hash(certificate: x509.Certificate, algorithm: str) -> bytes:
    return hashlib.new(algorithm, certificate.public_bytes(Encoding.DER)).digest()


# keyed by the certificate, which hashes and compares its whole DER
_cached_certificate_hash = functools.lru_cache(maxsize=CERTIFICATE_CACHE_SIZE)(_certificate_hash)


def _check_signer(signer_info: cms.SignerInfo, context: _Context) -> _SignerOutcome:
    outcome = _SignerOutcome()
    try:
        _check_signer_into(signer_info, context, outcome)
    except _Invalid as problem:
        outcome.reason = str(problem)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as error:
        outcome.reason = f"malformed SignerInfo ({type(error).__name__})"
    return outcome


def _check_signer_into(
    signer_info: cms.SignerInfo, context: _Context, outcome: _SignerOutcome
) -> None:
    digest_oid = str(signer_info["digest_algorithm"]["algorithm"].dotted)
    digest_name = DIGEST_NAMES.get(digest_oid, digest_oid)
    outcome.digest_algorithm = digest_name
    outcome.signature_algorithm = _family_name(signer_info)
    certificate = context.certificates.find(signer_info["sid"])
    if certificate is None:
        raise _Invalid("the signer certificate is not in the message")
    outcome.certificate = certificate
    _check_digest_name(digest_name)
    content_digest = context.digest(digest_name)
    signed_attrs = signer_info["signed_attrs"]
    if isinstance(signed_attrs, core.Void):
        if context.econtent_type != ID_DATA:
            raise _Invalid("no signed attributes over a content that is not id-data")
        prehashed = None if outcome.signature_algorithm.startswith("ed") else content_digest
        data = bytes(context.content) if prehashed is None else b""
        outcome.signature_algorithm = _check_signature(
            signer_info, certificate, data, digest_name, prehashed
        )
        return
    attributes = parse_signed_attributes(signed_attrs.contents)
    outcome.attributes = attributes
    _check_attributes(attributes, context, content_digest)
    _check_ess(attributes, certificate, context.certificates)
    outcome.signature_algorithm = _check_signature(
        signer_info, certificate, signed_attributes_set(signed_attrs.contents), digest_name, None
    )


def _family_name(signer_info: cms.SignerInfo) -> str:
    oid = str(signer_info["signature_algorithm"]["algorithm"].dotted)
    return _SIGNATURE_ALGORITHMS.get(oid, (oid, None))[0]


def _check_attributes(
    attributes: ParsedSignedAttributes, context: _Context, content_digest: bytes
) -> None:
    if attributes.problems:
        raise _Invalid(attributes.problems[0])
    if attributes.content_type is None:
        raise _Invalid("signed attributes without contentType")
    if attributes.content_type != context.econtent_type:
        raise _Invalid("contentType attribute differs from the encapsulated content type")
    if attributes.message_digest is None:
        raise _Invalid("signed attributes without messageDigest")
    if attributes.message_digest != content_digest:
        raise _Invalid("message digest mismatch: the content was altered")


def _validate(outcome: _SignerOutcome, context: _Context) -> None:
    if outcome.reason or outcome.certificate is None or context.validator is None:
        return
    untrusted = [*context.certificates.others(outcome.certificate), *context.trusted_intermediates]
    outcome.validation = context.validator.validate(
        outcome.certificate, untrusted, Purpose.SMIME_SIGN, context.at
    )


# --------------------------------------------------------------------------- message


@dataclass
class _Signed:
    """The CMS and the content found in the MIME entity."""

    cms_der: bytes
    content: bytes | memoryview | None  # detached content, None for opaque
    micalgs: tuple[str, ...] = ()


def _locate(entity: mime.MimeEntity) -> _Signed:
    kind = smime_parts.smime_kind(entity)
    if kind is smime_parts.SmimeKind.MULTIPART_SIGNED:
        parts = smime_parts.parse_multipart_signed(entity)
        if parts.protocol not in smime_parts.SIGNATURE_PROTOCOLS:
            raise _Invalid("multipart/signed with a protocol other than pkcs7-signature")
        return _Signed(parts.signature, parts.content_view, parts.micalgs)
    if kind is smime_parts.SmimeKind.PKCS7_MIME:
        declared = smime_parts.smime_type(entity)
        if declared not in (None, "signed-data"):
            raise _Invalid(f"not a signed message (smime-type {declared})")
        return _Signed(transfer.body_bytes(entity), None)
    raise _Invalid(f"not a signed message ({entity.content_type})")


def _signed_data(cms_der: bytes) -> cms.SignedData:
    info = cms.ContentInfo.load(cms_der)
    if info["content_type"].dotted != "1.2.840.113549.1.7.2":
        raise _Invalid(f"the CMS content is {info['content_type'].native}, not signed-data")
    return info["content"]


def _check_micalg(micalgs: tuple[str, ...], signer_digests: set[str]) -> None:
    if not micalgs:
        raise _Invalid("multipart/signed without micalg")
    declared = {_normalise_micalg(value) for value in micalgs}
    actual = {
        _normalise_micalg(smime_parts.MICALG_BY_DIGEST.get(name, name)) for name in signer_digests
    }
    if declared != actual:
        raise _Invalid("micalg does not match the digest algorithm of the signature")


@dataclass
class _Inner:
    """What the signed content says about itself (wrapping, header protection)."""

    protected_headers: tuple[tuple[str, str], ...] = ()
    inner_message: bytes | None = None
    extra: dict[str, str] = field(default_factory=dict)
    from_addresses: tuple[str, ...] = ()


def _inspect_content(content: bytes, canonical: bool) -> _Inner:
    """Wrapping and header protection of the signed content (``canonical``: known to be
    CRLF-canonical already, as a detached part of a canonicalised entity is)."""
    try:
        entity = mime.parse_entity(content if canonical else mime.canonicalize_crlf(content))
        if smime_parts.smime_kind(entity) is smime_parts.SmimeKind.RFC822:
            inner = mime.parse_entity(entity.data, entity.body_start, entity.body_end)
            headers = tuple(header_protection.protected_header_fields(inner))
            return _Inner(headers, entity.body, {"wrapped": "message/rfc822"}, _froms(headers))
        mode = header_protection.header_protection_mode(entity)
        if mode is not None:
            headers = tuple(header_protection.protected_header_fields(entity))
            return _Inner(headers, None, {"hp": mode}, _froms(headers))
    except MalformedMessage:
        pass
    return _Inner()


def _froms(headers: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(_from_addresses([value for name, value in headers if name.lower() == "from"]))


def _bound(signers: Sequence[SignerInfoResult], address: str) -> bool:
    return any(
        signer.signature_valid
        and signer.certificate_validation is not None
        and signer.certificate_validation.valid
        and any(addresses_match(address, candidate) for candidate in signer.email_addresses)
        for signer in signers
    )


def _binding(signers: Sequence[SignerInfoResult], wanted: Sequence[str]) -> tuple[bool, str]:
    if not wanted:
        return False, "no From address to bind the signer to"
    for address in wanted:
        if not _bound(signers, address):
            return False, f"no valid signer certificate is bound to {address}"
    return True, ""


def _first_problem(signers: Sequence[SignerInfoResult], validator_given: bool) -> str:
    for signer in signers:
        if not signer.signature_valid:
            return signer.reason
    if not validator_given:
        return "signer certificate not validated (no validator given)"
    for signer in signers:
        validation = signer.certificate_validation
        if validation is not None and not validation.valid:
            detail = f": {validation.reason}" if validation.reason else ""
            return f"signer certificate {validation.status.value}{detail}"
    return ""


def _verify(
    top: mime.MimeEntity,
    validator: ChainValidator | None,
    from_address: str | None,
    trusted_intermediates: Sequence[x509.Certificate],
    at: datetime | None,
) -> VerifyResult:
    located = _locate(top)
    signed_data = _signed_data(located.cms_der)
    encap = signed_data["encap_content_info"]
    econtent_type = str(encap["content_type"].dotted)
    detached = located.content is not None
    if located.content is not None:
        content: bytes | memoryview = located.content
    elif isinstance(encap["content"], core.Void) or encap["content"] is None:
        raise _Invalid("signed-data without content (a detached signature without its part)")
    else:
        content = bytes(encap["content"])  # constructed (BER) octet strings are merged
    signer_infos = list(signed_data["signer_infos"])
    if not signer_infos:
        raise _Invalid("no signers")
    if len(signer_infos) > MAX_SIGNERS:
        raise _Invalid(f"more than {MAX_SIGNERS} signers")
    context = _Context(
        content=content,
        econtent_type=econtent_type,
        certificates=_Certificates.from_signed_data(signed_data),
        validator=validator,
        trusted_intermediates=trusted_intermediates,
        at=at,
    )
    outcomes = [_check_signer(signer_info, context) for signer_info in signer_infos]
    for outcome in outcomes:
        _validate(outcome, context)
    signers = tuple(outcome.result() for outcome in outcomes)
    content_bytes = bytes(content)
    inner = _inspect_content(content_bytes, canonical=detached)
    reason = _first_problem(signers, validator is not None)
    if not reason and detached:
        try:
            _check_micalg(located.micalgs, {signer.digest_algorithm for signer in signers})
        except _Invalid as problem:
            reason = str(problem)
    wanted = [from_address] if from_address else _from_addresses(top.header_values("From"))
    wanted += [address for address in inner.from_addresses if address not in wanted]
    bound, binding_problem = _binding(signers, wanted)
    reason = reason or binding_problem
    return VerifyResult(
        valid=not reason,
        reason=reason,
        signers=signers,
        content=content_bytes,
        from_address_bound=bound,
        detached=detached,
        extra=inner.extra,
        protected_headers=inner.protected_headers,
        inner_message=inner.inner_message,
    )


def verify(
    entity: bytes,
    *,
    validator: ChainValidator | None,
    from_address: str | None,
    trusted_intermediates: Sequence[x509.Certificate] = (),
    at: datetime | None = None,
) -> VerifyResult:
    """Verify a signed MIME entity; see the module docstring for every check.

    Never raises for bad input: the result is then ``valid=False`` with the reason."""
    return _never_raising(
        lambda: _verify(
            mime.parse_entity(mime.canonicalize_crlf(entity)),
            validator,
            from_address,
            trusted_intermediates,
            at,
        )
    )


def verify_parsed(
    top: mime.MimeEntity,
    *,
    validator: ChainValidator | None,
    from_address: str | None,
    trusted_intermediates: Sequence[x509.Certificate] = (),
    at: datetime | None = None,
) -> VerifyResult:
    """``verify`` for an entity the caller has already parsed (``mime.parse_entity`` over
    CRLF-canonical bytes): the inbound agent parses each message once."""
    return _never_raising(lambda: _verify(top, validator, from_address, trusted_intermediates, at))


def _never_raising(run: Callable[[], VerifyResult]) -> VerifyResult:
    """``run()``, with bad input turned into an invalid result (module docstring)."""
    try:
        return run()
    except _Invalid as problem:
        return VerifyResult(valid=False, reason=str(problem))
    except MalformedMessage as problem:
        return VerifyResult(valid=False, reason=f"malformed message: {problem}")
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, LookupError) as error:
        return VerifyResult(valid=False, reason=f"malformed CMS ({type(error).__name__})")
    except RecursionError:
        return VerifyResult(valid=False, reason="malformed CMS (nesting too deep)")
