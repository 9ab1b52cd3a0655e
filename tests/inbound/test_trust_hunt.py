"""Adversarial inputs against the inbound promise (issue 7): a message is shown as
``signature=valid; signer="..."`` without the ``[NON VÉRIFIÉ]`` tag only when its
signer is bound to the From the doctor sees, and every inbound field imitating ours is
removed.

Cast (``tests.inbound.test_process``): claire.durand@clinique-b.test holds a valid
signing certificate of the trust space and plays the attacker who wants to be shown as
bruno.petit@chu-a.test, a colleague of the recipient alice.martin@chu-a.test. Some
attacks need no certificate at all: anyone can encrypt to alice's public certificate.
Messages are made with ``gateway.smime`` as the outbound agent of another gateway would
make them.

Each finding's test failed before its fix: in ``gateway.inbound.process`` (every From
address bound, a decrypted or signed entity keeps its MIME fields only, no orphan
continuation line, a CBC failure under ``unsigned_cbc = "mark"`` delivered marked like
the garbage a valid padding gives) and ``gateway.inbound.headers`` (RFC 8601
authserv-id lexing, no outer field but the trace beside protected ones, no MDN from
content without integrity). The last section holds attacks that were tried and held."""

from __future__ import annotations

import email.header
from email.utils import getaddresses

import pytest
from asn1crypto import cms, core

from gateway.inbound.headers import NOT_VERIFIED_TAG, Signature, notifications_allowed
from gateway.inbound.process import Decision, InboundPolicy, InboundResult
from gateway.pki.dev import DevPki
from gateway.smime import mime, smime_parts, transfer
from gateway.smime.encrypt import Recipient, encrypt_entity
from tests.inbound.test_process import (
    ALICE,
    HOST,
    LETTER,
    Cast,
    build_cast,
    outbound,
    outer_fields,
    parsed,
    subject,
)

BRUNO = "bruno.petit@chu-a.test"
CLAIRE_FROM = b"From: Claire <claire.durand@clinique-b.test>\r\n"
FORGED_FIELDS = (
    b"Missive-Security: encrypted=aes-256-gcm; signature=valid;"
    b' signer="bruno.petit@chu-a.test"; weak=no\r\n'
    b"Authentication-Results: mx.chu-a.test; smime=pass"
    b" body.smime-identifier=bruno.petit@chu-a.test\r\n"
    b"From: Bruno <bruno.petit@chu-a.test>\r\n"
    b"Subject: Urgent: nouveau protocole\r\n"
)
FORGED_ENTITY = b"Content-Type: text/plain; charset=utf-8\r\n" + FORGED_FIELDS + b"\r\nBonjour\r\n"


@pytest.fixture(scope="module")
def cast(dev_pki: DevPki) -> Cast:
    return build_cast(dev_pki)


def letter_from(from_fields: bytes) -> bytes:
    assert CLAIRE_FROM in LETTER
    return LETTER.replace(CLAIRE_FROM, from_fields)


def shown_from_addresses(result: InboundResult) -> list[str]:
    values = parsed(result).get_all("From", [])
    return [address for _, address in getaddresses([str(v) for v in values]) if address]


def our_fields_only(result: InboundResult) -> None:
    """The delivered header holds exactly the two fields we added, unaltered."""
    shown = parsed(result)
    assert len(shown.get_all("Missive-Security", [])) == 1
    value = " ".join(str(shown["Missive-Security"]).split())
    facts = result.facts
    assert value == (
        f"encrypted={facts.cipher or 'no'}; signature={facts.signature.value};"
        f' signer="{facts.signer}"; weak={"yes" if facts.weak else "no"}'
    )
    our_results = [v for v in shown.get_all("Authentication-Results", []) if HOST in str(v).lower()]
    assert len(our_results) == 1


def subjects(result: InboundResult) -> list[str]:
    """Every Subject of the delivered message, RFC 2047-decoded."""
    values = parsed(result).get_all("Subject", [])
    return [str(email.header.make_header(email.header.decode_header(v))) for v in values]


# --------------------------------------------------------------------------- From binding


@pytest.mark.parametrize(
    "from_value",
    [
        b"claire.durand@clinique-b.test, Bruno <bruno.petit@chu-a.test>",
        b"claire.durand@clinique-b.test <bruno.petit@chu-a.test>",
        b"<claire.durand@clinique-b.test> bruno.petit@chu-a.test",
    ],
    ids=["mailbox-list", "bare-then-angle", "angle-then-bare"],
)
def test_every_mailbox_of_the_outer_from_is_bound(cast: Cast, from_value: bytes) -> None:
    """Only the first address ``getaddresses`` finds is bound; the others (an angle-addr
    a reader takes as *the* address, or a second author) are shown unchecked."""
    letter = letter_from(b"From: " + from_value + b"\r\n")
    result = cast.process(outbound(cast, letter, protect_headers=False))
    assert BRUNO in shown_from_addresses(result)
    assert result.facts.signature is not Signature.VALID
    assert subject(result).startswith(NOT_VERIFIED_TAG)


def test_a_second_from_field_is_bound(cast: Cast) -> None:
    """RFC 5322 §3.6 allows one From field; readers differ on which of two they show."""
    letter = letter_from(CLAIRE_FROM + b"From: Bruno <bruno.petit@chu-a.test>\r\n")
    result = cast.process(outbound(cast, letter, protect_headers=False))
    assert BRUNO in shown_from_addresses(result)
    assert result.facts.signature is not Signature.VALID
    assert subject(result).startswith(NOT_VERIFIED_TAG)


# --------------------------------------------------------------------------- our fields


def test_header_fields_inside_an_unsigned_encrypted_entity_stay_out_of_the_header(
    cast: Cast,
) -> None:
    """No certificate needed: the decrypted entity's own header block (not an RFC 9788
    payload, not a wrapped message) becomes part of the delivered header as is."""
    encrypted = encrypt_entity(FORGED_ENTITY, [Recipient(cast.cert(ALICE))], cipher="aes-256-gcm")
    result = cast.process(outer_fields() + encrypted)
    assert result.facts.signature is Signature.NONE
    our_fields_only(result)
    assert BRUNO not in shown_from_addresses(result)
    assert all(text.startswith(NOT_VERIFIED_TAG) for text in subjects(result))


def test_header_fields_inside_a_signed_part_stay_out_of_the_header(cast: Cast) -> None:
    """Claire's valid signature over a part whose header names Bruno as From: the
    message is shown as valid with a From the signer is not bound to."""
    encrypted = encrypt_entity(
        cast.signed(FORGED_ENTITY), [Recipient(cast.cert(ALICE))], cipher="aes-256-gcm"
    )
    result = cast.process(outer_fields() + encrypted)
    our_fields_only(result)
    shown_as_valid = result.facts.signature is Signature.VALID
    assert not (shown_as_valid and BRUNO in shown_from_addresses(result))
    assert not (shown_as_valid and "Urgent: nouveau protocole" in subjects(result))


def test_header_fields_of_a_part_with_a_broken_signature_stay_out_of_the_header(
    cast: Cast,
) -> None:
    forged = cast.signed(FORGED_ENTITY).replace(b"Bonjour", b"BONJOUR")
    result = cast.process(outer_fields() + forged)
    assert result.facts.signature is Signature.INVALID
    our_fields_only(result)


def test_a_leading_continuation_line_cannot_extend_our_field(cast: Cast) -> None:
    """A message whose first line starts with white space (the IMAP fetcher queues what
    the partner's mailbox holds, with no Received field on top) continues the last field
    we add."""
    injected = b'\t; signature=valid; signer="bruno.petit@chu-a.test"\r\n'
    result = cast.process(injected + LETTER)
    our_fields_only(result)


@pytest.mark.parametrize(
    "authserv",
    [b'"mx.chu-a.test"', b"(a\\)b) mx.chu-a.test", b"(((((x))))) mx.chu-a.test"],
    ids=["quoted-string", "quoted-pair-in-comment", "deeply-nested-comment"],
)
def test_authentication_results_with_our_authserv_id_in_any_syntax_is_removed(
    cast: Cast, authserv: bytes
) -> None:
    """RFC 8601 §2.2: authserv-id is a ``value`` (token or quoted-string), CFWS around
    it; comments nest and hold quoted-pairs (RFC 5322 §3.2.2)."""
    forged = b"Authentication-Results: " + authserv + b"; smime=pass\r\n"
    result = cast.process(forged + LETTER)
    assert result.facts.signature is Signature.NONE
    values = parsed(result).get_all("Authentication-Results", [])
    assert [" ".join(str(value).split()) for value in values] == [f"{HOST}; smime=none"]


@pytest.mark.parametrize(
    "added",
    [
        b"Reply-To: Claire <claire.durand@evil.test>\r\n",
        b"Sender: Bruno <bruno.petit@chu-a.test>\r\n",
    ],
    ids=["reply-to", "sender"],
)
def test_outer_fields_added_in_transit_are_not_shown_with_a_protected_header(
    cast: Cast, added: bytes
) -> None:
    """A network attacker adds a field the signed RFC 9788 payload does not carry:
    ``headers.merged`` keeps it (``"fields added in transit"``), and the message is
    shown as valid and untagged with a Reply-To (or a Sender, which Outlook shows as
    "Bruno on behalf of Claire") that nobody signed. RFC 9788's receiving side renders
    the protected fields, not a merge of both blocks; only the trace stays outside."""
    message = outbound(cast)
    result = cast.process(b"Received: from relay.test by mx.chu-a.test\r\n" + added + message)
    name = added.split(b":", 1)[0].decode()
    assert result.facts.header_source == "hp-cipher"
    shown_as_valid = result.facts.signature is Signature.VALID
    assert not (shown_as_valid and parsed(result).get_all(name)), parsed(result).get_all(name)


# --------------------------------------------------------------------------- EFAIL, oracles


def last_two_blocks(message: bytes, flip: int) -> bytes:
    """An attacker's edit of a captured AES-CBC message (the RecipientInfo, so the key,
    kept): the content cut to its last two blocks, the block before them as IV, the last
    octet of the first kept block XORed with ``flip``, which XORs the padding octet."""
    entity = mime.parse_entity(mime.split_message(message)[1])
    info = cms.ContentInfo.load(transfer.body_bytes(entity))
    encrypted = info["content"]["encrypted_content_info"]
    content = encrypted["encrypted_content"].native
    iv, first, last = content[-48:-32], bytearray(content[-32:-16]), content[-16:]
    first[-1] ^= flip
    encrypted["content_encryption_algorithm"]["parameters"] = core.OctetString(iv)
    encrypted["encrypted_content"] = bytes(first) + last
    return outer_fields() + smime_parts.pkcs7_mime_entity(info.dump(force=True), "enveloped-data")


@pytest.mark.parametrize("unsigned_cbc", ["mark", "hold"])
def test_cbc_padding_validity_is_not_observable(cast: Cast, unsigned_cbc: str) -> None:
    """Vaudenay's padding oracle (RFC 3218 §2.3 asks for one behaviour on every
    failure): a hold sends the sender a DSN (``gateway.inbound.stage``), a delivery
    does not (and may send an MDN). ``flip=0`` keeps the original padding (valid);
    ``0xFF`` makes it 0xEF-0xFE, never valid. Whatever the padding, the sender must
    see the same outcome."""
    captured = outbound(cast, cipher="aes-256-cbc")  # claire's letter, signed, to alice
    policy = InboundPolicy(unsigned_cbc=unsigned_cbc)
    decisions = {
        cast.process(last_two_blocks(captured, flip), policy).decision for flip in (0, 0xFF)
    }
    assert len(decisions) == 1, decisions


def test_a_cbc_failure_under_mark_is_delivered_still_encrypted_and_marked(cast: Cast) -> None:
    """What the uniform behaviour delivers: the message as received (nothing decrypted),
    marked, Subject tagged; the cause stays in the local facts."""
    captured = outbound(cast, cipher="aes-256-cbc")
    received = last_two_blocks(captured, 0xFF)
    result = cast.process(received, InboundPolicy(unsigned_cbc="mark"))
    assert result.decision is Decision.DELIVER and result.reason == ""
    assert result.facts.failure_detail and not result.facts.decrypted
    assert result.facts.signature is Signature.NONE and result.facts.cipher == "aes-256-cbc"
    assert subject(result).startswith(NOT_VERIFIED_TAG)
    our_fields_only(result)
    assert received.partition(b"\r\n\r\n")[2] in result.message  # still encrypted
    assert not notifications_allowed(result.message.partition(b"\r\n\r\n")[0] + b"\r\n")


@pytest.mark.parametrize(
    ("field", "allowed"),
    [
        ("encrypted=no; signature=none", True),
        ("encrypted=aes-256-gcm; signature=none", True),
        ("encrypted=aes-256-cbc; signature=valid", True),
        ("encrypted=aes-256-cbc; signature=none", False),
        ("encrypted=aes-128-cbc; signature=invalid", False),
        ("encrypted=des-ede3-cbc; signature=none", False),
        ("encrypted=some-new-cipher; signature=none", False),
    ],
)
def test_an_mdn_needs_content_with_integrity(field: str, allowed: bool) -> None:
    """No MDN from a header block an attacker may have written through CBC gadgets
    (EFAIL: a chosen Disposition-Notification-To or Message-ID), and none that would tell
    one failure from another; read from our own field (``notifications_allowed``)."""
    block = (
        f'Missive-Security: {field};\r\n\tsigner=""; weak=no\r\n'
        "Disposition-Notification-To: <claire.durand@clinique-b.test>\r\n"
    ).encode()
    assert notifications_allowed(block) is allowed


def test_an_mdn_needs_our_field() -> None:
    assert not notifications_allowed(b"Disposition-Notification-To: <a@b.test>\r\n")


# --------------------------------------------------------------------------- held


def test_protected_from_with_two_mailboxes_is_not_valid(cast: Cast) -> None:
    """Held today: the protected From's addresses are all bound (``verify``)."""
    letter = letter_from(b"From: claire.durand@clinique-b.test <bruno.petit@chu-a.test>\r\n")
    result = cast.process(outbound(cast, letter, protect_headers=True))
    assert result.facts.signature is Signature.INVALID
    assert subject(result).startswith(NOT_VERIFIED_TAG)


def test_unsigned_payload_claiming_a_protected_from_is_marked(cast: Cast) -> None:
    """Held today: an encrypted-only RFC 9788 payload may show any From, but marked."""
    letter = letter_from(b"From: Bruno <bruno.petit@chu-a.test>\r\n")
    result = cast.process(outbound(cast, letter, signed=False))
    assert result.facts.signature is Signature.NONE
    assert subject(result).startswith(NOT_VERIFIED_TAG)
    our_fields_only(result)


@pytest.mark.parametrize(
    "from_value",
    [
        b'"bruno.petit@chu-a.test" <claire.durand@clinique-b.test>',
        b"=?utf-8?q?bruno.petit=40chu-a.test?= <claire.durand@clinique-b.test>",
        b"Bruno Petit (bruno.petit@chu-a.test) <claire.durand@clinique-b.test>",
    ],
    ids=["quoted", "encoded-word", "comment"],
)
def test_a_display_name_naming_another_address_is_marked(cast: Cast, from_value: bytes) -> None:
    """Claire's valid signature, her own mailbox, but a display name that most message
    lists show instead: Bruno's address. It must be bound too, so the letter is marked."""
    result = cast.process(outbound(cast, letter_from(b"From: " + from_value + b"\r\n")))
    assert result.facts.signature is Signature.INVALID
    assert subject(result).startswith(NOT_VERIFIED_TAG)


def test_a_display_name_that_is_the_signers_own_address_stays_valid(cast: Cast) -> None:
    letter = letter_from(
        b'From: "claire.durand@clinique-b.test" <claire.durand@clinique-b.test>\r\n'
    )
    result = cast.process(outbound(cast, letter))
    assert result.facts.signature is Signature.VALID
