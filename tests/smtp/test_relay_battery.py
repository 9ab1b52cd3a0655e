"""The open-relay battery against the relay listener, from a client that is not a relay
client: every probe is refused and audited, and a legitimate inbound message passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.pki.dev import DevPki

from .front import RELAY, SUBMISSION, in_thread, raw_exchange, running_front, write_config

OUTSIDE = b"MAIL FROM:<someone@clinique-b.test>\r\n"

PROBES = [
    # (what, MAIL line, RCPT line, expected RCPT code)
    ("plain relay", OUTSIDE, b"RCPT TO:<victim@example.org>\r\n", 554),
    ("%-hack", OUTSIDE, b"RCPT TO:<victim%example.org@chu-a.test>\r\n", 554),
    ("bang path", OUTSIDE, b"RCPT TO:<example.org!victim@chu-a.test>\r\n", 554),
    ("source route", OUTSIDE, b"RCPT TO:<@chu-a.test:victim@example.org>\r\n", 553),
    ("quoted local part", OUTSIDE, b'RCPT TO:<"victim@example.org"@chu-a.test>\r\n', 553),
    ("user@local@remote", OUTSIDE, b"RCPT TO:<victim@chu-a.test@example.org>\r\n", 553),
    ("address literal", OUTSIDE, b"RCPT TO:<victim@[127.0.0.1]>\r\n", 553),
    ("subdomain of a local domain", OUTSIDE, b"RCPT TO:<victim@evil.chu-a.test>\r\n", 554),
    ("no angle brackets", OUTSIDE, b"RCPT TO:victim@chu-a.test\r\n", 501),
    ("CR in a parameter", OUTSIDE, b"RCPT TO:<alice@chu-a.test> NOTIFY=\rNEVER\r\n", 501),
    ("NUL in a parameter", OUTSIDE, b"RCPT TO:<alice@chu-a.test> ORCPT=rfc822;a\x00b\r\n", 501),
]


@pytest.mark.parametrize(("what", "mail", "rcpt", "code"), PROBES, ids=[p[0] for p in PROBES])
async def test_relay_probe_refused(
    tmp_path: Path, dev_pki: DevPki, what: str, mail: bytes, rcpt: bytes, code: int
) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        replies = await in_thread(lambda: raw_exchange(port, [b"EHLO probe\r\n", mail, rcpt]))
    assert replies[-2].startswith("250 2.1.0"), replies
    assert replies[-1].startswith(f"{code} "), replies
    refused = front.audit.of_type("smtp.refused")
    assert [e.details["stage"] for e in refused] == ["rcpt"]
    assert refused[0].outcome is not None and refused[0].outcome.startswith(str(code))


async def test_local_sender_from_outside_refused(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        script = [b"EHLO probe\r\n", b"MAIL FROM:<alice.martin@chu-a.test>\r\n"]
        replies = await in_thread(lambda: raw_exchange(port, script))
    assert replies[-1].startswith("550 5.7.1"), replies


async def test_local_from_header_from_outside_refused(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        script = [
            b"EHLO probe\r\n",
            OUTSIDE,
            b"RCPT TO:<alice.martin@chu-a.test>\r\n",
            b"DATA\r\n",
            b"From: <bob.durand@chu-a.test>\r\n\r\nhello\r\n.\r\n",
        ]
        replies = await in_thread(lambda: raw_exchange(port, script))
    assert replies[-1].startswith("550 5.7.1"), replies
    assert front.queue.messages == []


async def test_unauthenticated_submission_refused(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:
        port = front.port("submission")
        script = [b"EHLO probe\r\n", b"MAIL FROM:<alice.martin@chu-a.test>\r\n"]
        replies = await in_thread(lambda: raw_exchange(port, script))
    assert replies[-1].startswith("530 "), replies


async def test_inbound_to_local_domain_accepted(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        script = [
            b"EHLO probe\r\n",
            OUTSIDE,
            b"RCPT TO:<alice.martin@chu-a.test>\r\n",
            b"DATA\r\n",
            b"From: <someone@clinique-b.test>\r\n\r\nhello\r\n.\r\n",
        ]
        replies = await in_thread(lambda: raw_exchange(port, script))
    assert replies[-1].startswith("250 2.0.0 OK queued as Q0001"), replies
    [stored] = front.queue.messages
    received, rest = stored.content.split(b"\r\n", 1)
    assert received == b"Received: from probe (127.0.0.1)"
    assert rest.startswith(b"\tby mx.chu-a.test (Missive) with ESMTP id Q")  # no TLS here
    assert rest.endswith(b"\r\nFrom: <someone@clinique-b.test>\r\n\r\nhello\r\n")
    assert stored.origin.client_address == "127.0.0.1"
    assert stored.origin.helo == "probe"
