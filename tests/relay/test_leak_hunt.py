"""Adversarial review of the outbound promises (issue 6), session 5 helper H3.

The promises under test: no byte of the clear text (body or Subject) of a message that
must be encrypted leaves the gateway; a Bcc recipient is invisible to the others; the
protected Subject is never copied into a DSN that may leave in clear.

Each test builds what a real mail client, a hospital application or a careless script
can submit and looks at the bytes the gateway would send: the secure agent's outgoing
messages (``SecureAgent.process`` with real crypto, opened with ``openssl cms``), the
clear outer header (``gateway.relay.protect``) and the DSN (``gateway.relay.dsn``).
The first part holds the findings: each test failed on the code as reviewed (the
Resent-Bcc and outer-header ones pass since the fix in ``gateway.relay.protect``; the
others wait for a fix outside this helper's files); the second part the attacks that
held, kept as regressions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.relay import protect
from gateway.relay.agent import AgentResult
from gateway.relay.dsn import build_dsn
from gateway.relay.dsn_recipients import Action, Reason, RecipientReport
from gateway.smime import mime
from gateway.spool.model import Origin
from tests.peers.cms_tools import OpenSSLCms
from tests.relay.test_agent import (
    ALICE,
    BODY,
    CLAIRE,
    DAN,
    HIDDEN,
    SUBJECT,
    SUBMISSION,
    Site,
    envelope,
    make_agent,
    open_as,
)
from tests.relay.test_agent import site as site  # the module's PKI and annuaire

SECRETS = (SUBJECT, BODY, "Dupont")
MSS_TO = "x@mss.test"
MSS_HIDDEN = "hidden@mss.test"
LOCAL_TO = "bruno.petit@chu-a.test"
LOCAL_HIDDEN = "secretariat@chu-a.test"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def compose(*fields: str, body: str = BODY, blank_line: bool = True) -> bytes:
    """A message: ``fields`` then (normally) the empty line and ``body``; CRLF."""
    lines = [*fields, *([""] if blank_line else []), body, ""]
    return "\r\n".join(lines).encode("utf-8")


def standard_fields(to: Sequence[str], *extra: str) -> tuple[str, ...]:
    return (
        f"From: Alice Martin <{ALICE}>",
        f"To: {', '.join(to)}",
        *extra,
        f"Subject: {SUBJECT}",
        "Date: Sat, 28 Nov 2026 12:00:00 +0100",
        "Message-ID: <leak-hunt@chu-a.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    )


def readers_of(result: AgentResult, address: str) -> list[bytes]:
    """The content of every outgoing message that ``address`` receives."""
    return [m.content for m in result.messages if address in {r.address for r in m.recipients}]


def failure_dsn(original: bytes, *, ret: str | None = None) -> bytes:
    report = RecipientReport(
        CLAIRE, Action.FAILED, "5.7.4", last_attempt=NOW, reason=Reason.NO_VALID_CERTIFICATE
    )
    return build_dsn(
        reporting_mta="mx.chu-a.test",
        original_sender="someone@elsewhere.test",
        recipients=[report],
        original=original,
        arrival_date=NOW,
        now=NOW,
        ret=ret,
        protected=True,
    )


# == findings: these fail on the code as reviewed ======================================


async def test_bcc_field_does_not_reach_the_shown_recipients_of_a_tls_only_route(
    site: Site, tmp_path: Path
) -> None:
    """A client that leaves its Bcc field in the submitted message (RFC 5322 §3.6.3
    lets the originator's system remove it: here that system is the gateway)."""
    agent, _ = make_agent(site, tmp_path)
    raw = compose(*standard_fields([MSS_TO], f"Bcc: {MSS_HIDDEN}"))
    result = await agent.process(envelope(MSS_TO, MSS_HIDDEN), raw, SUBMISSION)
    assert readers_of(result, MSS_TO)
    for content in readers_of(result, MSS_TO):
        assert MSS_HIDDEN.encode() not in content


async def test_bcc_field_does_not_reach_the_shown_local_recipients(
    site: Site, tmp_path: Path
) -> None:
    agent, _ = make_agent(site, tmp_path)
    raw = compose(*standard_fields([LOCAL_TO], f"Bcc: {LOCAL_HIDDEN}"))
    result = await agent.process(envelope(LOCAL_TO, LOCAL_HIDDEN), raw, SUBMISSION)
    assert readers_of(result, LOCAL_TO)
    for content in readers_of(result, LOCAL_TO):
        assert LOCAL_HIDDEN.encode() not in content


RESENT = (
    f"Resent-From: {ALICE}",
    f"Resent-To: {DAN}",
    f"Resent-Bcc: {HIDDEN}",
    "Resent-Date: Sat, 28 Nov 2026 12:30:00 +0100",
)


@pytest.mark.parametrize(("protect_headers", "wrap"), [(True, False), (False, True), (True, True)])
def test_resent_bcc_is_never_in_the_cryptographic_payload(
    protect_headers: bool, wrap: bool
) -> None:
    """RFC 5322 §3.6.6: Resent-Bcc is the blind copy of a resent message; the payload
    every recipient decrypts must not name it (as Bcc is not named)."""
    split = protect.SplitMessage.of(compose(*standard_fields([CLAIRE], *RESENT)))
    payload = protect.cryptographic_payload(split, protect=protect_headers, wrap=wrap)
    assert HIDDEN.encode() not in payload


@pytest.mark.parametrize("protect_headers", [True, False])
def test_resent_bcc_is_never_in_the_clear_outer_header(protect_headers: bool) -> None:
    split = protect.SplitMessage.of(compose(*standard_fields([CLAIRE], *RESENT)))
    assert HIDDEN.encode() not in protect.outer_header(split, protect=protect_headers)


async def test_resent_to_recipient_does_not_learn_the_resent_bcc_recipient(
    site: Site, tmp_path: Path, openssl_cms: OpenSSLCms
) -> None:
    """End to end: a message resent to DAN with a blind copy to HIDDEN; DAN decrypts
    his own message and must not find HIDDEN in it."""
    agent, _ = make_agent(site, tmp_path)
    raw = compose(*standard_fields([CLAIRE], *RESENT))
    result = await agent.process(envelope(DAN, HIDDEN), raw, SUBMISSION)
    (for_dan,) = [m for m in result.messages if [r.address for r in m.recipients] == [DAN]]
    signed = open_as(openssl_cms, site, for_dan, DAN)
    assert SUBJECT.encode() in signed  # really opened: the protected Subject is inside
    assert HIDDEN.encode() not in signed


def test_body_line_after_a_missing_blank_line_stays_out_of_the_outer_header() -> None:
    """A script that forgets the empty line after its header block: the first line that
    is not a header field starts the body for the stdlib parser (``email``'s
    MissingHeaderBodySeparatorDefect) and for mail clients, but the gateway keeps
    reading fields and copies a body line shaped like an allowed field in clear."""
    raw = compose(
        *standard_fields([CLAIRE]),
        body="Cher confrere,\r\nDate: 27/11 consultation de M. Dupont Jean, diabete.",
        blank_line=False,
    )
    outer = protect.outer_header(protect.SplitMessage.of(raw), protect=True)
    assert b"Dupont" not in outer


def test_body_line_after_a_missing_blank_line_stays_out_of_a_protected_dsn() -> None:
    raw = compose(
        *standard_fields([CLAIRE]),
        body="Cher confrere,\r\nDate: 27/11 consultation de M. Dupont Jean, diabete.",
        blank_line=False,
    )
    assert b"Dupont" not in failure_dsn(raw)


def test_8bit_content_type_parameter_is_protected_not_an_exception() -> None:
    """Not a leak (the entry is held, fail closed), but an SMTPUTF8 message (RFC 6532
    §3.2: UTF-8 in header values) with a UTF-8 file name in its top Content-Type makes
    header protection raise UnicodeEncodeError: the whole message, every route, is held."""
    raw = compose(
        f"From: {ALICE}",
        f"To: {CLAIRE}",
        f"Subject: {SUBJECT}",
        "MIME-Version: 1.0",
        'Content-Type: application/pdf; name="Dupont_résultats.pdf"',
        "Content-Transfer-Encoding: base64",
        body="JVBERi0xLjQK",
    )
    payload = protect.cryptographic_payload(protect.SplitMessage.of(raw), protect=True, wrap=False)
    assert "Dupont_résultats.pdf".encode() in payload


# == attacks that held: kept as regressions ============================================

HIDING_PLACES = {
    "thread-topic": (f"Thread-Topic: {SUBJECT}", f"Thread-Index: {SUBJECT}"),
    "x-subject": (f"X-Subject: {SUBJECT}", f"X-Original-Subject: {SUBJECT}"),
    "comments-keywords": (f"Comments: {SUBJECT}", f"Keywords: {SUBJECT}"),
    "encoded-word": ("Subject: =?utf-8?q?Compte_rendu_M=2E_Dupont_Jean?=",),
    "two-subjects": (f"Subject: {SUBJECT}", f"subject: {SUBJECT}"),
    "folded": ("Subject: Compte rendu\r\n M. Dupont\r\n\tJean",),
    "obsolete-colon": (f"Subject : {SUBJECT}", f"SUBJECT\t: {SUBJECT}"),
    "smtputf8": ("Subject: Compte rendu M. Dupont Jean, né le 1er mars",),
    "content-description": (f"Content-Description: {SUBJECT}",),
    "rfc2231-filename": (
        "Content-Disposition: attachment;\r\n filename*0*=utf-8''Dupont%20Jean;\r\n"
        " filename*1=_cr.pdf",
    ),
    "broken-line-then-fold": ("Note about Dupont", " continued Dupont"),
}
LEADING = {"leading-fold": (" Dupont before any field", f"X-Topic: {SUBJECT}")}


@pytest.mark.parametrize("where", sorted(HIDING_PLACES) + sorted(LEADING))
def test_subject_under_another_name_stays_inside(where: str) -> None:
    raw = compose(
        *LEADING.get(where, ()),
        f"From: Alice Martin <{ALICE}>",
        f"To: {CLAIRE}",
        *HIDING_PLACES.get(where, ()),
        "Message-ID: <leak-hunt@chu-a.test>",
        body=BODY,
    )
    split = protect.SplitMessage.of(raw)
    outer = protect.outer_header(split, protect=True)
    assert b"Dupont" not in outer and b"Jean" not in outer
    assert mime.parse_entity(outer + b"\r\n").header_values("Subject") == ["[...]"]
    assert b"Dupont" not in failure_dsn(raw)


def test_message_rfc822_part_and_its_subject_stay_inside() -> None:
    raw = compose(
        f"From: {ALICE}",
        f"To: {CLAIRE}",
        "Subject: Fwd",
        "MIME-Version: 1.0",
        "Content-Type: message/rfc822",
        body=f"From: x@y.test\r\nSubject: {SUBJECT}\r\n\r\n{BODY}",
    )
    split = protect.SplitMessage.of(raw)
    assert b"Dupont" not in protect.outer_header(split, protect=True)
    assert b"Dupont" not in failure_dsn(raw)
    assert b"Dupont" not in failure_dsn(raw, ret="FULL")  # RET=FULL downgraded


async def test_mixed_routes_bcc_and_case_variants_never_clear(
    site: Site, tmp_path: Path, openssl_cms: OpenSSLCms
) -> None:
    """S/MIME + tls-only + postal fallback, a To address whose local part differs in case
    from its RCPT (RFC 8550 §3: not the same, so hidden), a sub-address, a Bcc and an
    envelope-only recipient: each S/MIME message has one recipient, carries no clear
    text and never names the Bcc recipient, not even once decrypted."""
    agent, _ = make_agent(site, tmp_path)
    claire_upper = CLAIRE.replace("claire", "Claire")
    tagged = DAN.replace("dan@", "dan+urgent@")
    raw = compose(*standard_fields([claire_upper, MSS_TO], f"Bcc: {HIDDEN}"))
    recipients = (CLAIRE, MSS_TO, HIDDEN, tagged, DAN, "expired@clinique-b.test")
    result = await agent.process(envelope(*recipients), raw, SUBMISSION)
    smime = [m for m in result.messages if m.protection == "smime"]
    assert smime and all(len(m.recipients) == 1 for m in smime)  # none of them shown
    for outgoing in smime:
        assert not any(secret.encode() in outgoing.content for secret in SECRETS)
        assert HIDDEN.encode() not in outgoing.content
    (for_dan,) = [m for m in smime if [r.address for r in m.recipients] == [DAN]]
    assert HIDDEN.encode() not in open_as(openssl_cms, site, for_dan, DAN)
    assert tagged in {m.recipients[0].address for m in smime}  # RFC 5233: Dan's certificate
    assert [(f.address, f.action) for f in result.fallback] == [
        ("expired@clinique-b.test", "postal")
    ]


async def test_only_bcc_recipients_each_get_their_own_message(site: Site, tmp_path: Path) -> None:
    """What Thunderbird writes when every recipient is a Bcc: an empty group in To."""
    agent, _ = make_agent(site, tmp_path)
    raw = compose(*standard_fields(["undisclosed-recipients:;"], f"Bcc: {DAN}, {HIDDEN}"))
    result = await agent.process(envelope(DAN, HIDDEN), raw, SUBMISSION)
    assert [[r.address for r in m.recipients] for m in result.messages] == [[DAN], [HIDDEN]]
    for outgoing in result.messages:
        assert not any(secret.encode() in outgoing.content for secret in SECRETS)
        assert b"Bcc" not in outgoing.content


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {getattr(record, 'fields', None)!r}")


async def test_no_log_line_holds_a_subject_or_body(site: Site, tmp_path: Path) -> None:
    """Every outcome of the agent (S/MIME, tls-only, local, fallback, tamper failure;
    personal and organisation signer) at DEBUG level, on a message with the Subject in
    several fields: no log line and no audit event holds the Subject or the body."""
    agent, _ = make_agent(site, tmp_path)
    raw = compose(
        *standard_fields(
            [CLAIRE, MSS_TO, LOCAL_TO, "doc@direct.test"],
            f"Bcc: {HIDDEN}",
            f"Thread-Topic: {SUBJECT}",
            f"X-Subject: {SUBJECT}",
        )
    )
    recipients = (CLAIRE, MSS_TO, LOCAL_TO, HIDDEN, "expired@clinique-b.test", "x@direct.test")
    handler, logger = _Records(), logging.getLogger("missive")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        as_relay = Origin("submission", client_address="127.0.0.1", auth_login="bruno")
        for origin in (SUBMISSION, as_relay):
            result = await agent.process(envelope(*recipients), raw, origin, queue_id="q1")
            assert result.messages and result.fallback and result.failed
            for event in result.audit:
                assert not any(secret in repr(event) for secret in SECRETS)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any(line.startswith("annuaire.lookup ") for line in handler.lines)
    for line in handler.lines:
        assert not any(secret in line for secret in SECRETS), line
