"""The inbound agent's sans-IO core: one received message for one local recipient in,
the message to deliver (or hold) and the facts to audit out.

Role: ``process_inbound`` decrypts with the recipient's keys, verifies the signature and
its binding to From, shows the protected header fields, removes the inbound fields that
imitate ours and adds the result (``gateway.inbound.headers``). Pure: no I/O, no clock
but the validator's; the caller (stage runner, later) spools, quarantines, delivers and
audits.

Cost (issue 7 Speed): the received entity and the decrypted one are each made CRLF-
canonical and parsed once, and that parse is handed to ``decrypt_parsed`` and
``verify_parsed`` (before, each step re-scanned and re-parsed the same bytes: six
canonical checks of the message and its decrypted content up to verification, now two).
Session 9: the entity to deliver is not parsed again either: the received or decrypted
entity's parse when nothing was verified, the verifier's parse of the signed content
(``VerifyResult.content_entity``) when it made one of those bytes; the entity views
work from that parse (``gateway.inbound.entity_views``); the facts are built at once
after a decryption; the From addresses of a From value are read once per value (a
bounded cache, ``_cached_addresses_of``). ~85 us CPU less a call on a 10 KB letter
(``bench``-like messages, alternated runs).

Steps and the rules that decide them:
1. Decrypt only when the *whole body* is ``application/pkcs7-mime`` enveloped-data or
   authEnveloped-data (RFC 8551 §3.3; RFC 5083). EFAIL (Poddebniak et al., 2018): an
   encrypted part inside a multipart is never decrypted, so decrypted text is never
   spliced with clear siblings an attacker chose; such a message is handled as a clear
   one (``encrypted=no``) and the encrypted part travels untouched.
2. Verify when the (decrypted) entity is signed, ``multipart/signed`` or opaque
   signed-data (RFC 8551 §3.5), with ``gateway.smime.verify``: the signer must be bound
   to the outer From and, with RFC 9788 header protection or a wrapped message (RFC 8551
   §3.1), to the protected From, which is what the reader sees (RFC 8550 §3). Every
   address of every outer From field is bound, not only the first: RFC 5322 §3.6 allows
   one From field but readers differ on which of two they show, and a value such as
   ``a@x.test <b@y.test>`` is read by ``getaddresses`` as two mailboxes while a reader
   shows (and answers) the angle-addr. What is delivered is the signed content itself,
   nothing around it.
3. Show the protected header fields: from an RFC 9788 Cryptographic Payload (``hp``
   parameter; the ``HP-Outer`` fields are dropped and ``hp`` removed, the entity is no
   longer a payload) or from the wrapped ``message/rfc822`` inner message. Only inside a
   cryptographic layer: a clear message with ``hp`` or an rfc822 body is left as it is.
   Any other entity keeps its MIME fields only (Content-*, MIME-Version): the header
   block of a decrypted or signed entity that is neither a payload nor a wrapped message
   protects nothing a reader is told about, so its other fields (a From the signer is
   not bound to, a second Subject without the tag, a copy of ours) are dropped.
4. Remove every inbound field that imitates ours, add ``Authentication-Results`` and
   ``Missive-Security``, tag the Subject when the signature is missing or invalid. A
   line that starts with white space but has no field before it in its block (RFC 5322
   §2.2.3 allows folding only inside a field) is dropped: written after our fields it
   would continue ``Missive-Security``.

Decisions (``Decision``), with ``InboundPolicy`` (``[inbound]`` of the configuration):
- a key the gateway does not hold (no RecipientInfo names one of ``keys``: end-to-end
  to a smart card): ``unknown_key = "pass-marked"`` delivers the still-encrypted message
  marked (``PASS_MARKED``); ``"hold"`` holds it;
- any other decryption failure (damaged, tampered, wrong key, 3DES when ``accept_3des``
  is off): ``HOLD`` with the one public text ``PUBLIC_DECRYPT_ERROR`` (RFC 3218 §2.3);
  the cause is only in ``AuditFacts.failure_detail``, for the local log. Except, with
  ``unsigned_cbc = "mark"``, for content encrypted with a CBC cipher that the policy
  accepts: that failure is delivered marked, still encrypted, as received
  (``DELIVER``). A sender who changed the last blocks of a captured CBC message gets
  garbage decrypted and delivered marked when the padding happens to be valid, a
  failure otherwise: holding only the second (a DSN) would tell him which - Vaudenay's
  padding oracle, enough to decrypt the captured message (RFC 3218 §2.3 asks for one
  behaviour on every failure). With ``"hold"`` both are held. A helper's review found
  it;
- content decrypted with a CBC cipher (no integrity, EFAIL's malleability gadget) and
  without a valid signature: ``unsigned_cbc = "mark"`` delivers it marked, ``"hold"``
  holds it. AES-GCM (authEnveloped-data) is integrity-protected: not under this rule;
- 3DES is decrypted only when ``accept_3des``, and then marked ``weak=yes``;
- everything else is delivered (``DELIVER``), marked when the signature is missing or
  invalid. Never delivered silently as trusted: the marks are the result.
A held message's output is the message as received (nothing decrypted is kept in it).

The entity views of steps 3-4 (protected fields, MIME fields only) are in
``gateway.inbound.entity_views``.

Failure contract: bad input never raises. Unparsable MIME/CMS ends as an invalid or
absent signature, or as a hold (``UNPROCESSABLE``) if the structure cannot be rebuilt;
exceptions from trusted code (the validator) propagate so the caller retries later.
The detection of "no key held" relies on ``decrypt``'s detail text (``NO_KEY_DETAIL``):
the decryptor has no separate error type for it.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace as _replace
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import getaddresses

from asn1crypto import cms

from gateway.inbound import headers
from gateway.inbound.entity_views import (
    is_orphan_continuation,
    mime_fields_only,
    protected_fields,
    with_mime_version,
)
from gateway.inbound.headers import Signature
from gateway.mailtext import addresses_in
from gateway.relay.protect import HeaderField, SplitMessage
from gateway.smime import mime, smime_parts, transfer
from gateway.smime.algorithms import CIPHERS, CIPHERS_BY_ASN1_NAME, WEAK_CIPHERS
from gateway.smime.certnames import addresses_match
from gateway.smime.decrypt import (
    ENCRYPTED_SMIME_TYPES,
    Decrypted,
    decrypt_parsed,
)
from gateway.smime.enveloped_data import OID_AUTH_ENVELOPED_DATA, OID_ENVELOPED_DATA
from gateway.smime.recipient_infos import DecryptionKey
from gateway.smime.types import (
    PUBLIC_DECRYPT_ERROR,
    ChainValidator,
    DecryptError,
    MalformedMessage,
    VerifyResult,
)
from gateway.smime.verify import verify_parsed

NO_KEY_DETAIL = "no recipient info for our keys"
UNPROCESSABLE = "the message could not be processed"
KEY_NOT_HELD = "encrypted for a key the gateway does not hold"
UNSIGNED_CBC = "CBC-encrypted content without a valid signature"
_HOSTILE_INPUT = (ValueError, TypeError, KeyError, IndexError, LookupError, OverflowError)


class Decision(enum.Enum):
    DELIVER = "deliver"
    HOLD = "hold"
    PASS_MARKED = "pass-marked"  # noqa: S105 - still encrypted for a key not held, marked


@dataclass(frozen=True)
class InboundPolicy:
    """``[inbound]`` rules of the configuration that decide here."""

    unknown_key: str = "pass-marked"  # pass-marked | hold
    unsigned_cbc: str = "mark"  # mark | hold
    accept_3des: bool = False

    def __post_init__(self) -> None:
        if self.unknown_key not in ("pass-marked", "hold"):
            raise ValueError(f"unknown_key must be pass-marked or hold, not {self.unknown_key!r}")
        if self.unsigned_cbc not in ("mark", "hold"):
            raise ValueError(f"unsigned_cbc must be mark or hold, not {self.unsigned_cbc!r}")


@dataclass(frozen=True)
class AuditFacts:
    """What the audit trail records about one inbound decision (never content)."""

    recipient: str
    encrypted: bool = False  # the whole body was an encrypted S/MIME entity
    decrypted: bool = False
    cipher: str = ""  # content cipher, "" when not encrypted
    key_transport: str = ""  # "rsa-pkcs1v15" | "rsa-oaep" | "ecdh"
    key_serial: str = ""  # hex serial of the certificate whose key opened it
    signature: Signature = Signature.NONE
    signer: str = ""  # the signer certificate's address (bound to From when valid)
    signer_serial: str = ""  # hex
    signature_reason: str = ""  # why the signature is not valid ("" when valid)
    weak: bool = False  # 3DES accepted by accept_3des
    header_source: str = "outer"  # outer | hp-cipher | hp-clear | wrapped
    failure_detail: str = ""  # local log only: the precise cause of a failure


@dataclass(frozen=True)
class InboundResult:
    message: bytes  # what to deliver; for HOLD the message as received
    decision: Decision
    reason: str  # why held ("" otherwise); safe to show to the sender
    facts: AuditFacts


# --------------------------------------------------------------------------- entry point


def process_inbound(
    message: bytes,
    recipient: str,
    *,
    keys: Sequence[DecryptionKey],
    validator: ChainValidator | None,
    policy: InboundPolicy,
    hostname: str,
) -> InboundResult:
    """Process one received message for ``recipient`` (module docstring)."""
    try:
        return _process(message, recipient, keys, validator, policy, hostname)
    except (*_HOSTILE_INPUT, MalformedMessage, RecursionError) as error:
        detail = f"{type(error).__name__}: {str(error)[:200]}"
        facts = AuditFacts(recipient, failure_detail=detail)
        return InboundResult(message, Decision.HOLD, UNPROCESSABLE, facts)


@dataclass(frozen=True)
class _Opened:
    """The message after decryption and verification, before the headers are written."""

    outer: tuple[HeaderField, ...]
    entity: bytes  # the MIME entity to deliver
    facts: AuditFacts
    inside_crypto: bool  # entity came out of a decryption or a signature
    parsed: mime.MimeEntity | None = None  # ``entity`` parsed whole, when it already was
    canonical: bool = False  # ``entity`` is known to be CRLF-canonical


def _process(
    message: bytes,
    recipient: str,
    keys: Sequence[DecryptionKey],
    validator: ChainValidator | None,
    policy: InboundPolicy,
    hostname: str,
) -> InboundResult:
    split = SplitMessage.of(message)
    facts = AuditFacts(recipient)
    top = mime.parse_entity(split.entity)  # CRLF-canonical: mime.split_message's output
    decrypted: Decrypted | None = None
    if _is_whole_body_encrypted(top):
        try:
            decrypted = decrypt_parsed(top, keys, accept_3des=policy.accept_3des)
        except DecryptError as error:
            facts = AuditFacts(recipient, encrypted=True)
            return _undecrypted(message, split, facts, error, policy, hostname)
        facts = _decrypted_facts(recipient, decrypted)
        if not decrypted.authenticated and policy.unsigned_cbc == "mark":
            return _cbc_content_shown(message, split, decrypted, facts, validator, hostname)
        top = mime.parse_entity(mime.canonicalize_crlf(decrypted.content))
    return _shown(message, split, top, decrypted, facts, validator, policy, hostname)


def _shown(
    message: bytes,
    split: SplitMessage,
    top: mime.MimeEntity,
    decrypted: Decrypted | None,
    facts: AuditFacts,
    validator: ChainValidator | None,
    policy: InboundPolicy,
    hostname: str,
) -> InboundResult:
    """Verify, apply ``unsigned_cbc``, write the headers (steps 2-4)."""
    content, facts = _verified(top, facts, validator, _from_addresses(split.fields))
    inside_crypto = decrypted is not None or facts.signature is not Signature.NONE
    opened = _Opened(
        split.fields, content.data, facts, inside_crypto, content.parsed, content.canonical
    )
    if decrypted is not None and not decrypted.authenticated:
        if facts.signature is not Signature.VALID and policy.unsigned_cbc == "hold":
            return InboundResult(message, Decision.HOLD, UNSIGNED_CBC, opened.facts)
    return _deliverable(opened, hostname)


def _cbc_content_shown(
    message: bytes,
    split: SplitMessage,
    decrypted: Decrypted,
    facts: AuditFacts,
    validator: ChainValidator | None,
    hostname: str,
) -> InboundResult:
    """CBC content under ``unsigned_cbc = "mark"``: shown as any content, except that
    content the rest of the processing cannot handle is delivered marked as received,
    like a decryption failure, never held (module docstring): an attacker who chose its
    first blocks would otherwise learn from the hold (a DSN) that the padding of his
    changed last blocks was valid (a helper's fuzzing found ``Content-Type: a\x80``)."""
    try:
        top = mime.parse_entity(mime.canonicalize_crlf(decrypted.content))
        policy = InboundPolicy(unsigned_cbc="mark")
        return _shown(message, split, top, decrypted, facts, validator, policy, hostname)
    except (*_HOSTILE_INPUT, MalformedMessage, RecursionError) as error:
        detail = f"{type(error).__name__}: {str(error)[:200]}"
        failed = _replace(facts, decrypted=False, failure_detail=detail)
        return _marked_as_received(split, failed, hostname, Decision.DELIVER)


# --------------------------------------------------------------------------- decryption


def _is_whole_body_encrypted(top: mime.MimeEntity) -> bool:
    """The top-level entity is an encrypted application/pkcs7-mime (RFC 8551 §3.3): by
    its smime-type, or by its CMS content type when smime-type is absent."""
    if smime_parts.smime_kind(top) is not smime_parts.SmimeKind.PKCS7_MIME:
        return False
    declared = smime_parts.smime_type(top)
    if declared is not None:
        return declared in ENCRYPTED_SMIME_TYPES
    return _cms_content_type(transfer.body_bytes(top)) in (
        OID_ENVELOPED_DATA,
        OID_AUTH_ENVELOPED_DATA,
    )


def _cms_content_type(der: bytes) -> str:
    try:
        return str(cms.ContentInfo.load(der)["content_type"].dotted)
    except _HOSTILE_INPUT:
        return ""


def _envelope_cipher(entity: bytes) -> str:
    """The content cipher named by an envelope we cannot open (for the marks), or ""."""
    try:
        body = transfer.body_bytes(mime.parse_entity(mime.canonicalize_crlf(entity)))
        info = cms.ContentInfo.load(body)
        authenticated = info["content_type"].dotted == OID_AUTH_ENVELOPED_DATA
        name = "auth_encrypted_content_info" if authenticated else "encrypted_content_info"
        algorithm = info["content"][name]["content_encryption_algorithm"]
        spec = CIPHERS_BY_ASN1_NAME.get(str(algorithm["algorithm"].native))
    except (*_HOSTILE_INPUT, MalformedMessage):
        return ""
    return spec.name if spec is not None else ""


def _decrypted_facts(recipient: str, decrypted: Decrypted) -> AuditFacts:
    """The facts of a whole body decrypted (built at once: one object, not three)."""
    return AuditFacts(
        recipient,
        encrypted=True,
        decrypted=True,
        cipher=decrypted.cipher,
        key_transport=decrypted.key_transport,
        key_serial=f"{decrypted.certificate.serial_number:x}",
        weak=decrypted.weak,
    )


def _undecrypted(
    message: bytes,
    split: SplitMessage,
    facts: AuditFacts,
    error: DecryptError,
    policy: InboundPolicy,
    hostname: str,
) -> InboundResult:
    """A key we do not hold (policy ``unknown_key``) or a failure (hold, public text)."""
    facts = _replace(facts, failure_detail=error.detail)
    cipher = _envelope_cipher(split.entity)
    if not error.detail.startswith(NO_KEY_DETAIL):
        if not _failure_looks_like_garbage(cipher, policy):
            return InboundResult(message, Decision.HOLD, PUBLIC_DECRYPT_ERROR, facts)
        facts = _replace(facts, cipher=cipher, weak=cipher in WEAK_CIPHERS)
        return _marked_as_received(split, facts, hostname, Decision.DELIVER)
    facts = _replace(facts, cipher=cipher, weak=cipher in WEAK_CIPHERS)
    if policy.unknown_key == "hold":
        return InboundResult(message, Decision.HOLD, KEY_NOT_HELD, facts)
    return _marked_as_received(split, facts, hostname, Decision.PASS_MARKED)


def _failure_looks_like_garbage(cipher: str, policy: InboundPolicy) -> bool:
    """Whether a decryption failure must look like a delivery of garbage (module
    docstring): ``unsigned_cbc = "mark"`` and content under a CBC cipher the policy would
    have decrypted (3DES refused by ``accept_3des`` is decided from clear data: held)."""
    spec = CIPHERS.get(cipher)
    if policy.unsigned_cbc != "mark" or spec is None or spec.aead:
        return False
    return policy.accept_3des or cipher not in WEAK_CIPHERS


def _marked_as_received(
    split: SplitMessage, facts: AuditFacts, hostname: str, decision: Decision
) -> InboundResult:
    """The message still encrypted, with our marks (signature none, tagged Subject)."""
    opened = _Opened(split.fields, split.entity, facts, inside_crypto=False)
    marked = _deliverable(opened, hostname)
    return InboundResult(marked.message, decision, "", facts)


# --------------------------------------------------------------------------- signature


def _is_signed(top: mime.MimeEntity) -> bool:
    kind = smime_parts.smime_kind(top)
    if kind is smime_parts.SmimeKind.MULTIPART_SIGNED:
        return True
    return kind is smime_parts.SmimeKind.PKCS7_MIME and smime_parts.smime_type(top) in (
        None,
        "signed-data",
    )


def _verified(
    top: mime.MimeEntity,
    facts: AuditFacts,
    validator: ChainValidator | None,
    from_addresses: Sequence[str],
) -> tuple[_Content, AuditFacts]:
    """Verify a signed entity; (the entity to deliver, the facts with the signature).
    ``verify`` binds the first From address; every other one is checked here."""
    unchanged = _Content(top.data, top, canonical=True)  # ``_process`` canonicalised it
    if not _is_signed(top):
        return unchanged, facts
    from_address = from_addresses[0] if from_addresses else None
    result = verify_parsed(top, validator=validator, from_address=from_address)
    signer, serial = _signer_identity(result, from_address)
    reason = result.reason or _unbound_from(result, from_addresses[1:])
    facts = _replace(
        facts,
        signature=Signature.INVALID if reason else Signature.VALID,
        signer=signer,
        signer_serial=serial,
        signature_reason=reason,
    )
    if not result.content:
        return unchanged, facts
    return _signed_content(result), facts


@dataclass(frozen=True)
class _Content:
    """The entity to deliver, with what is known of it already."""

    data: bytes
    parsed: mime.MimeEntity | None  # ``data`` parsed whole, when it was already
    canonical: bool  # ``data`` is known to be CRLF-canonical


def _signed_content(result: VerifyResult) -> _Content:
    """The content a signature covers, with the verifier's parse of it when it made one
    of these very bytes (``VerifyResult.content_entity``: parsed from CRLF-canonical
    bytes, so canonical too). Else canonical is known only for a detached part of our
    canonicalised entity (``VerifyResult.detached``), not for an opaque eContent."""
    parsed = result.content_entity
    if parsed is not None and parsed.data is result.content:
        return _Content(result.content, parsed, canonical=True)
    return _Content(result.content, None, canonical=result.detached)


def _unbound_from(result: VerifyResult, addresses: Sequence[str]) -> str:
    """Why one of ``addresses`` is not bound to a signer whose signature and certificate
    are valid (RFC 8550 §3), or "" when every one is."""
    for address in addresses:
        if not any(
            signer.signature_valid
            and signer.certificate_validation is not None
            and signer.certificate_validation.valid
            and any(addresses_match(address, candidate) for candidate in signer.email_addresses)
            for signer in result.signers
        ):
            return f"no valid signer certificate is bound to {address}"
    return ""


def _signer_identity(result: VerifyResult, from_address: str | None) -> tuple[str, str]:
    """(address, hex serial) of the signer: the one bound to From when there is one."""
    candidates = [s for s in result.signers if s.certificate is not None]
    for signer in candidates:
        for address in signer.email_addresses:
            if from_address and addresses_match(address, from_address):
                assert signer.certificate is not None
                return address, f"{signer.certificate.serial_number:x}"
    for signer in candidates:
        assert signer.certificate is not None
        first = signer.email_addresses[0] if signer.email_addresses else ""
        return first, f"{signer.certificate.serial_number:x}"
    return "", ""


def _from_addresses(fields: Sequence[HeaderField]) -> list[str]:
    """Every address of every From field, in order, each once; with every address a
    display name holds (RFC 2047 words decoded): ``"bruno@chu-a.test" <claire@x.test>``
    is shown as Bruno in most message lists, so Bruno's address must be bound to the
    signer too, and Claire's valid signature alone leaves the message marked."""
    values = tuple(field.value for field in fields if field.key == "from")
    if sum(map(len, values)) > _MAX_CACHED_FROM:
        return list(_addresses_of(values))
    return list(_cached_addresses_of(values))


_MAX_CACHED_FROM = 512  # characters of From values kept as a cache key (memory bound)


def _addresses_of(values: tuple[str, ...]) -> tuple[str, ...]:
    """``_from_addresses`` of the From field values: a pure function of them."""
    pairs = getaddresses(values)
    found = [address for _, address in pairs if address]
    for name, _ in pairs:  # after the mailboxes: the first mailbox names the signer
        found.extend(f"{local}@{domain}" for local, domain in addresses_in(_decoded_words(name)))
    return tuple(dict.fromkeys(found))


# A correspondent writes the same From value on each letter: its addresses are read once
# (``getaddresses`` and the encoded-word decoding, ~12 us CPU a message, measured); at
# most 1024 values of at most ``_MAX_CACHED_FROM`` characters are kept.
_cached_addresses_of = functools.lru_cache(maxsize=1024)(_addresses_of)


def _decoded_words(text: str) -> str:
    """``text`` with its RFC 2047 encoded-words decoded (as a reader shows it)."""
    try:
        return str(make_header(decode_header(text)))
    except (*_HOSTILE_INPUT, HeaderParseError):
        return text


# --------------------------------------------------------------------------- presentation


def _deliverable(opened: _Opened, hostname: str) -> InboundResult:
    """The message with its header fields cleaned, shown and marked."""
    fields: list[HeaderField] = list(opened.outer)
    facts = opened.facts
    parsed = opened.parsed or mime.parse_entity(opened.entity)  # the one parse here
    protected = (
        protected_fields(parsed, canonical=opened.canonical) if opened.inside_crypto else None
    )
    if protected is not None:
        shown, entity, source = protected
        fields = headers.merged(fields, shown)
        facts = _replace(facts, header_source=source)
    else:
        entity = mime_fields_only(parsed)
    fields = [
        f for f in headers.without_imitations(fields, hostname) if not is_orphan_continuation(f)
    ]
    if facts.signature is not Signature.VALID:
        fields = headers.with_tagged_subject(fields)
    added = headers.authentication_results(
        hostname, facts.signature, facts.signer, facts.signer_serial
    ) + headers.missive_security(facts.cipher or "no", facts.signature, facts.signer, facts.weak)
    output = added + b"".join(field.raw for field in fields) + with_mime_version(entity, parsed)
    return InboundResult(output, Decision.DELIVER, "", facts)


__all__ = [
    "KEY_NOT_HELD",
    "UNPROCESSABLE",
    "UNSIGNED_CBC",
    "AuditFacts",
    "Decision",
    "InboundPolicy",
    "InboundResult",
    "process_inbound",
]
