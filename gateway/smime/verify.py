"""S/MIME signature verification (RFC 8551 §3.5, RFC 5652 §5.6, RFC 8550 §3).

Role: ``verify(entity, ...)`` takes a signed MIME entity, multipart/signed (detached) or
application/pkcs7-mime; smime-type=signed-data (opaque), and returns a ``VerifyResult``
describing every signer. It never raises on bad input: malformed MIME, CMS or ASN.1
gives ``VerifyResult(valid=False, reason=...)``. ``verify_parsed`` takes an entity the
caller already parsed (the inbound agent parses each message once).

This module holds the message-level steps; each signer is checked by
``gateway.smime.signature_check`` (signed attributes, ESS, algorithms, signature,
certificate validation: its docstring lists every check) against the certificates of
``gateway.smime.signer_certs`` (found by sid; parsed-certificate and ESS-hash caches).
This module imports those two, never the reverse.

Message-level checks (each failure makes the result invalid, with the first reason):
- for multipart/signed the micalg parameter must list exactly the signers' digests
  (RFC 8551 §3.5.3; "sha256" and "sha-256" spellings both accepted) and the protocol must
  be application/(x-)pkcs7-signature (RFC 1847 §2.1);
- the CMS content is signed-data, with its content (eContent, or the detached part);
- work is bounded: at most 16 signers are looked at (100 certificates, see
  ``gateway.smime.signer_certs``).

Binding (RFC 8550 §3): the From address given, and the From of the protected header
fields / wrapped inner message when there is one (that is what the reader sees), must
each equal an address of a signer whose signature and certificate are valid: rfc822Name
or SmtpUTF8Mailbox (RFC 8398) SANs, or the emailAddress of the subject DN. Local parts
compare exactly, domains case-insensitively (RFC 5321 §2.4, RFC 5280 §7.5). With
``from_address=None`` the entity's own From field is used, if it has one.

Robustness: the outer structure is parsed with asn1crypto (``gateway.smime.asn1``
registers the attribute specs asn1crypto lacks).

What the signed content says about itself is reported too: a wrapped message
(message/rfc822, RFC 8551 §3.1, Direct) gives ``inner_message``, its header fields in
``protected_headers`` and ``extra["wrapped"]``; an RFC 9788 Cryptographic Payload
(``hp="clear"``/``"cipher"`` on its Content-Type) gives its header fields in
``protected_headers`` and ``extra["hp"]``. Values are unfolded but not RFC 2047-decoded.
The content, parsed for that, is handed over too (``content_entity``) when that parse is
of ``content`` itself, so that a caller does not parse it again.

Security notes: the content returned is exactly what the signature covers (the detached
part's bytes, or eContent); a caller must deliver that and nothing around it. Only bad
*input* is turned into an invalid result: an exception raised by the validator (trusted
code) propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import getaddresses

from asn1crypto import cms, core
from cryptography import x509

import gateway.smime.asn1  # noqa: F401 - registers the attribute specs asn1crypto lacks
from gateway.smime import header_protection, mime, smime_parts, transfer
from gateway.smime.certnames import addresses_match
from gateway.smime.signature_check import Context, Invalid, check_signer, validate
from gateway.smime.signer_certs import Certificates
from gateway.smime.types import (
    ChainValidator,
    MalformedMessage,
    SignerInfoResult,
    VerifyResult,
)

MAX_SIGNERS = 16


# --------------------------------------------------------------------------- helpers


def _normalise_micalg(value: str) -> str:
    return value.strip().lower().replace("-", "")


def _from_addresses(values: Sequence[str]) -> list[str]:
    return [address for _, address in getaddresses(list(values)) if address]


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
            raise Invalid("multipart/signed with a protocol other than pkcs7-signature")
        return _Signed(parts.signature, parts.content_view, parts.micalgs)
    if kind is smime_parts.SmimeKind.PKCS7_MIME:
        declared = smime_parts.smime_type(entity)
        if declared not in (None, "signed-data"):
            raise Invalid(f"not a signed message (smime-type {declared})")
        return _Signed(transfer.body_bytes(entity), None)
    raise Invalid(f"not a signed message ({entity.content_type})")


def _signed_data(cms_der: bytes) -> cms.SignedData:
    info = cms.ContentInfo.load(cms_der)
    if info["content_type"].dotted != "1.2.840.113549.1.7.2":
        raise Invalid(f"the CMS content is {info['content_type'].native}, not signed-data")
    return info["content"]


def _check_micalg(micalgs: tuple[str, ...], signer_digests: set[str]) -> None:
    if not micalgs:
        raise Invalid("multipart/signed without micalg")
    declared = {_normalise_micalg(value) for value in micalgs}
    actual = {
        _normalise_micalg(smime_parts.MICALG_BY_DIGEST.get(name, name)) for name in signer_digests
    }
    if declared != actual:
        raise Invalid("micalg does not match the digest algorithm of the signature")


@dataclass
class _Inner:
    """What the signed content says about itself (wrapping, header protection)."""

    protected_headers: tuple[tuple[str, str], ...] = ()
    inner_message: bytes | None = None
    extra: dict[str, str] = field(default_factory=dict)
    from_addresses: tuple[str, ...] = ()
    entity: mime.MimeEntity | None = None  # the content parsed whole, when it was as is


def _inspect_content(content: bytes, canonical: bool) -> _Inner:
    """Wrapping and header protection of the signed content (``canonical``: known to be
    CRLF-canonical already, as a detached part of a canonicalised entity is)."""
    try:
        entity = mime.parse_entity(content if canonical else mime.canonicalize_crlf(content))
    except MalformedMessage:
        return _Inner()
    whole = entity if entity.data is content else None  # a parse of ``content`` itself
    try:
        if smime_parts.smime_kind(entity) is smime_parts.SmimeKind.RFC822:
            inner = mime.parse_entity(entity.data, entity.body_start, entity.body_end)
            headers = tuple(header_protection.protected_header_fields(inner))
            wrapped = {"wrapped": "message/rfc822"}
            return _Inner(headers, entity.body, wrapped, _froms(headers), whole)
        mode = header_protection.header_protection_mode(entity)
        if mode is not None:
            headers = tuple(header_protection.protected_header_fields(entity))
            return _Inner(headers, None, {"hp": mode}, _froms(headers), whole)
    except MalformedMessage:
        pass
    return _Inner(entity=whole)


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
        raise Invalid("signed-data without content (a detached signature without its part)")
    else:
        content = bytes(encap["content"])  # constructed (BER) octet strings are merged
    signer_infos = list(signed_data["signer_infos"])
    if not signer_infos:
        raise Invalid("no signers")
    if len(signer_infos) > MAX_SIGNERS:
        raise Invalid(f"more than {MAX_SIGNERS} signers")
    context = Context(
        content=content,
        econtent_type=econtent_type,
        certificates=Certificates.from_signed_data(signed_data),
        validator=validator,
        trusted_intermediates=trusted_intermediates,
        at=at,
    )
    outcomes = [check_signer(signer_info, context) for signer_info in signer_infos]
    for outcome in outcomes:
        validate(outcome, context)
    signers = tuple(outcome.result() for outcome in outcomes)
    content_bytes = bytes(content)
    inner = _inspect_content(content_bytes, canonical=detached)
    reason = _first_problem(signers, validator is not None)
    if not reason and detached:
        try:
            _check_micalg(located.micalgs, {signer.digest_algorithm for signer in signers})
        except Invalid as problem:
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
        content_entity=inner.entity,
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
    except Invalid as problem:
        return VerifyResult(valid=False, reason=str(problem))
    except MalformedMessage as problem:
        return VerifyResult(valid=False, reason=f"malformed message: {problem}")
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, LookupError) as error:
        return VerifyResult(valid=False, reason=f"malformed CMS ({type(error).__name__})")
    except RecursionError:
        return VerifyResult(valid=False, reason="malformed CMS (nesting too deep)")
