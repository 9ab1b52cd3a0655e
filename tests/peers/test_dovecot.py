"""The Dovecot fixture really stores and serves mail: LMTP delivery with one reply per
recipient (RFC 2033 §4.2, the smtplib pitfall), read back over IMAPS verified against the
dev CA; a bad password is refused; stopping leaves no process, even with a client open."""

from __future__ import annotations

import imaplib
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from tests.peers.dovecot import DovecotInstance
from tests.peers.fixtures import ca_bundle
from tests.peers.procs import live_processes

pytestmark = pytest.mark.peer

ALICE = "alice@chu-a.test"
BOB = "bob@chu-a.test"
SENDER = "claire.durand@clinique-b.test"
PUBLIC_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def sample_message(subject: str) -> bytes:
    return f"From: <{SENDER}>\nTo: <{ALICE}>\nSubject: {subject}\n\nbody of {subject}\n".encode()


def test_lmtp_replies_per_recipient_and_imaps_reads_back(
    dovecot_factory: Callable[..., DovecotInstance], dev_pki: DevPki
) -> None:
    dovecot = dovecot_factory(users={ALICE: "alice-pw", BOB: "bob-pw"})
    first = dovecot.lmtp_send(SENDER, [ALICE, "nobody@chu-a.test", BOB], sample_message("one"))
    assert first.replies[ALICE][0] == 250 and ALICE.encode() in first.replies[ALICE][1]
    assert first.replies["nobody@chu-a.test"][0] == 550
    assert first.replies[BOB][0] == 250 and BOB.encode() in first.replies[BOB][1]
    # A second transaction on a fresh connection gets its own reply, not a leftover.
    second = dovecot.lmtp_send(SENDER, [BOB], sample_message("two"))
    assert second.accepted() == [BOB]

    cafile = ca_bundle(dev_pki)
    [alice_message] = dovecot.fetch_all(ALICE, cafile=cafile)
    assert b"Subject: one" in alice_message and b"body of one\r\n" in alice_message
    bob_messages = dovecot.fetch_all(BOB, cafile=cafile)
    assert [b"Subject: one" in m for m in bob_messages] == [True, False]
    assert b"Subject: two" in bob_messages[1]
    stored = [
        path for path in dovecot.mail_dir.rglob("*") if path.is_file() and "new" in path.parts
    ]
    assert stored and all(path.stat().st_uid == 65534 for path in stored)


def test_plain_imap_works_and_bad_password_is_refused(
    dovecot: DovecotInstance, dev_pki: DevPki
) -> None:
    dovecot.lmtp_send(SENDER, [ALICE], sample_message("plain"))
    [message] = dovecot.fetch_all(ALICE)
    assert b"Subject: plain" in message

    client = dovecot.imaps(ca_bundle(dev_pki))
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(ALICE, "wrong password")


def test_imaps_client_checks_the_server_certificate(dovecot: DovecotInstance) -> None:
    """The public CA bundle does not know the dev CA: verification is really on."""
    with pytest.raises(ssl.SSLCertVerificationError):
        dovecot.imaps(PUBLIC_CA_BUNDLE)


def test_stop_leaves_no_process_even_with_a_client_connected(dovecot: DovecotInstance) -> None:
    assert dovecot.daemon is not None
    master = dovecot.daemon.pid
    client = dovecot.imap()
    client.login(ALICE, dovecot.users[ALICE])
    dovecot.stop()
    pgrep = subprocess.run(["pgrep", "-f", dovecot.instance_name], capture_output=True, text=True)
    assert pgrep.returncode == 1, pgrep.stdout
    assert live_processes(sessions=[master], groups=[master]) == []
