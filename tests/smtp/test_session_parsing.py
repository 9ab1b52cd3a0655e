"""MAIL/RCPT argument parsing and the DATA receiver, without sockets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.smtp.data import DataReceiver
from gateway.smtp.envelope import Address, parse_mail, parse_rcpt, same_mailbox
from gateway.smtp.replies import SmtpReply
from gateway.smtp.throttle import AuthThrottle, ThrottleLimits
from gateway.smtp.trace import protocol_name, received_header


def refused(action: object) -> int:
    with pytest.raises(SmtpReply) as caught:
        action()  # type: ignore[operator]
    return caught.value.reply.code


def test_mail_parameters() -> None:
    command = parse_mail(
        "<a@B.Test> size=10 body=8bitmime RET=hdrs ENVID=Q+2Bx SMTPUTF8", max_size=100
    )
    assert command.sender == Address("a", "b.test")
    params = command.params
    assert (params.size, params.body, params.ret, params.envid, params.smtputf8) == (
        10,
        "8BITMIME",
        "HDRS",
        "Q+x",
        True,
    )
    assert parse_mail("<>", max_size=1).sender.is_null


@pytest.mark.parametrize(
    ("arg", "code"),
    [
        ("<a@b.test> SIZE=101", 552),
        ("<a@b.test> SIZE=x", 501),
        ("<a@b.test> BODY=BINARYMIME", 501),
        ("<a@b.test> FOO=1", 555),
        ("<a@b.test> RET=FULL RET=HDRS", 501),
        ("<a@b.test> ENVID=a\x00b", 501),
        ("<a@b.test> ENVID=+0D", 501),  # xtext decoding to CR
        ("<a@b.test> SMTPUTF8=yes", 501),
        ("<é@b.test>", 553),  # non-ASCII without SMTPUTF8
        ("a@b.test", 501),
        ("<a@b.test>x", 501),
        ("<a..b@b.test>", 553),
        ("<a@-b.test>", 553),
    ],
)
def test_mail_refusals(arg: str, code: int) -> None:
    assert refused(lambda: parse_mail(arg, max_size=100)) == code


def test_utf8_address_with_smtputf8() -> None:
    assert parse_mail("<jérôme@hôpital.test> SMTPUTF8", max_size=1).sender.local == "jérôme"


def test_rcpt_postmaster_without_domain() -> None:
    command = parse_rcpt("<PostMaster>", smtputf8=False, postmaster_domain="chu-a.test")
    assert command.recipient == Address("postmaster", "chu-a.test")
    assert refused(lambda: parse_rcpt("<postmaster>", smtputf8=False)) == 553


@pytest.mark.parametrize("path", ["<POSTMASTER@chu-a.test>", "<PostMaster@CHU-A.test>"])
def test_the_postmaster_local_part_is_folded_to_lower_case(path: str) -> None:
    """RFC 5321 §4.1.1.3: "Postmaster" is case-insensitive, so these and ``<Postmaster>``
    name one mailbox (one RCPT kept, one copy delivered)."""
    command = parse_rcpt(path, smtputf8=False)
    assert command.recipient == Address("postmaster", "chu-a.test")
    bare = parse_rcpt("<Postmaster>", smtputf8=False, postmaster_domain="chu-a.test")
    assert same_mailbox(command, bare)


def test_other_local_parts_keep_their_case() -> None:
    """Only postmaster is folded: ``Jean`` and ``jean`` stay two mailboxes (RFC 5321
    §2.4), and a local part that merely starts with it is left alone."""
    upper = parse_rcpt("<Jean@chu-a.test>", smtputf8=False)
    lower = parse_rcpt("<jean@chu-a.test>", smtputf8=False)
    assert upper.recipient.local == "Jean" and not same_mailbox(upper, lower)
    near = parse_rcpt("<PostmasterX@chu-a.test>", smtputf8=False)
    assert near.recipient.local == "PostmasterX"


def test_rcpt_parameters() -> None:
    command = parse_rcpt(
        "<x@y.test> notify=Success,DELAY ORCPT=rfc822;X+2BY@Y.test", smtputf8=False
    )
    assert command.notify == ("SUCCESS", "DELAY")
    assert command.orcpt == "rfc822;X+Y@Y.test"
    assert parse_rcpt("<x@y.test> NOTIFY=never", smtputf8=False).notify == ("NEVER",)


@pytest.mark.parametrize(
    "arg",
    ["<x@y.test> NOTIFY=NEVER,SUCCESS", "<x@y.test> NOTIFY=", "<x@y.test> ORCPT=rfc822", "<>"],
)
def test_rcpt_refusals(arg: str) -> None:
    assert refused(lambda: parse_rcpt(arg, smtputf8=False)) in (501, 553)


def feed(lines: list[bytes], max_size: int = 10_000) -> DataReceiver:
    receiver = DataReceiver(max_size, chunk_size=1 << 20)
    for line in lines:
        if receiver.feed_line(line):
            break
    return receiver


def test_data_unstuffs_and_keeps_headers() -> None:
    receiver = feed([b"From: a@b.test\r\n", b"\r\n", b"..x\r\n", b".y\r\n", b".\r\n"])
    assert receiver.ended and receiver.problem is None
    assert receiver.take_chunk(final=True) == b"From: a@b.test\r\n\r\n.x\r\ny\r\n"
    assert receiver.headers == b"From: a@b.test\r\n"


@pytest.mark.parametrize("line", [b"a\rb\r\n", b"a\nb\r\n", b"a\r\r\n", b"\n.\r\n"])
def test_data_bare_newlines_refused(line: bytes) -> None:
    receiver = feed([line, b"ok\r\n", b".\r\n"])
    assert receiver.ended and receiver.problem is not None
    assert receiver.problem.code == 554
    assert receiver.take_chunk(final=True) == b""


def test_data_too_long_and_too_big() -> None:
    assert feed([b"x" * 1000 + b"\r\n", b".\r\n"]).problem is not None
    assert feed([b"x" * 999 + b"\r\n", b".\r\n"]).problem is None
    big = feed([b"x" * 50 + b"\r\n"] * 3 + [b".\r\n"], max_size=100)
    assert big.problem is not None and big.problem.code == 552


def test_data_fragment_of_long_line() -> None:
    receiver = DataReceiver(10_000)
    receiver.feed_fragment(b"x" * 1001)
    assert not receiver.feed_line(b"tail\r\n")  # the rest of the long line
    assert receiver.feed_line(b".\r\n")
    assert receiver.problem is not None and receiver.problem.code == 500


def test_throttle_window_and_keys() -> None:
    throttle = AuthThrottle(ThrottleLimits(window=10, max_per_ip=3, max_per_login=2, max_keys=4))
    throttle.failed("1.1.1.1", "a", now=0)
    throttle.failed("1.1.1.1", "a", now=1)
    assert throttle.blocked("1.1.1.1", "a", now=2) == "login"
    assert throttle.blocked("1.1.1.1", "b", now=2) is None
    throttle.failed("1.1.1.1", "b", now=3)
    assert throttle.blocked("1.1.1.1", "c", now=4) == "ip"
    assert throttle.blocked("1.1.1.1", "c", now=12) is None  # the window slid
    throttle.succeeded("a")
    assert throttle.blocked("2.2.2.2", "a", now=4) is None


def test_received_header_protocol_and_hostile_helo() -> None:
    assert protocol_name(extended=True, tls=True, authenticated=True, smtputf8=False) == "ESMTPSA"
    assert protocol_name(extended=True, tls=False, authenticated=False, smtputf8=True) == "UTF8SMTP"
    assert protocol_name(extended=False, tls=True, authenticated=False, smtputf8=False) == "SMTP"
    field = received_header(
        helo="evil\r\nBcc: x (y)",
        client_ip="192.0.2.7",
        hostname="mx.chu-a.test",
        protocol="ESMTPS",
        queue_id="Q1",
        when=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert field == (
        b"Received: from evil??Bcc:?x??y? (192.0.2.7)\r\n"
        b"\tby mx.chu-a.test (Missive) with ESMTPS id Q1;\r\n"
        b"\tFri, 02 Jan 2026 03:04:05 +0000\r\n"
    )
