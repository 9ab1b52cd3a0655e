"""The Postfix fixtures really relay and store mail: STARTTLS with a client certificate ends
in the MX's Maildir with the TLS use recorded; a foreign domain is refused (never an open
relay, RFC 5321 §7.1); a required client certificate is enforced; the hospital relay
forwards to the MX over TLS with its own certificate; stopping leaves no process."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import uuid
from collections.abc import Callable
from email import message_from_bytes

import pytest

from gateway.pki.dev import DevPki
from tests.peers.fixtures import ca_bundle
from tests.peers.postfix import PostfixInstance
from tests.peers.procs import live_processes

pytestmark = pytest.mark.peer

SENDER = "alice.martin@chu-a.test"
RECIPIENT = "claire.durand@clinique-b.test"


def client_context(dev_pki: DevPki, client_host: str | None) -> ssl.SSLContext:
    """Verifies the server against the dev CAs; presents ``client_host``'s certificate."""
    context = ssl.create_default_context(cafile=str(ca_bundle(dev_pki)))
    if client_host is not None:
        context.load_cert_chain(dev_pki.server_cert(client_host), dev_pki.server_key(client_host))
    return context


def sample_message(marker: str, to: str = RECIPIENT) -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: peer test\r\n"
        f"Message-ID: <{marker}@chu-a.test>\r\n\r\nbody {marker}\r\n"
    ).encode()


def received_headers(raw: bytes) -> list[str]:
    return [" ".join(value.split()) for value in message_from_bytes(raw).get_all("Received", [])]


def test_starttls_with_client_certificate_is_stored_with_tls_recorded(
    postfix_mx: PostfixInstance, dev_pki: DevPki
) -> None:
    marker = uuid.uuid4().hex
    with smtplib.SMTP(postfix_mx.host, postfix_mx.port, timeout=30) as client:
        client.starttls(context=client_context(dev_pki, "hospital.chu-a.test"))
        refused = client.sendmail(SENDER, [RECIPIENT], sample_message(marker))
    assert refused == {}

    [stored] = postfix_mx.wait_for_messages(1)
    assert f"body {marker}".encode() in stored
    [received] = received_headers(stored)
    assert "using TLSv1.3" in received
    assert 'Client CN "hospital.chu-a.test"' in received
    assert "(verified OK)" in received
    assert postfix_mx.messages("catchall") == [stored]


def test_named_mailbox_is_separate_from_the_catch_all(
    postfix_mx_factory: Callable[..., PostfixInstance],
) -> None:
    mx = postfix_mx_factory(mailboxes=[RECIPIENT])
    with smtplib.SMTP(mx.host, mx.port, timeout=30) as client:
        client.sendmail(SENDER, [RECIPIENT, "other@clinique-b.test"], sample_message("two"))
    mx.wait_for_messages(2)
    assert len(mx.messages(RECIPIENT)) == 1
    assert len(mx.messages("catchall")) == 1


def test_foreign_domain_is_refused(postfix_mx: PostfixInstance) -> None:
    with smtplib.SMTP(postfix_mx.host, postfix_mx.port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail(SENDER, ["someone@elsewhere.test"], sample_message("x"))
    code, text = refused.value.recipients["someone@elsewhere.test"]
    assert code == 554
    assert b"Relay access denied" in text
    assert "Mail queue is empty" in postfix_mx.postqueue("-p")
    assert postfix_mx.messages() == []


def test_required_client_certificate_is_enforced(
    postfix_mx_factory: Callable[..., PostfixInstance], dev_pki: DevPki
) -> None:
    mx = postfix_mx_factory(require_client_cert=True)
    with smtplib.SMTP(mx.host, mx.port, timeout=30) as client:
        assert client.mail(SENDER)[0] == 530  # RFC 3207 §4: "Must issue a STARTTLS command first"

    with smtplib.SMTP(mx.host, mx.port, timeout=30) as client:
        client.starttls(context=client_context(dev_pki, None))
        code, text = client.mail(SENDER)
    assert code == 421
    assert b"No client certificate presented" in text
    assert mx.messages() == []


def test_hospital_relay_forwards_to_the_mx_with_its_certificate(
    postfix_mx_factory: Callable[..., PostfixInstance],
    postfix_relay: Callable[..., PostfixInstance],
) -> None:
    mx = postfix_mx_factory(require_client_cert=True)
    relay = postfix_relay((mx.host, mx.port), tls_level="verify")
    marker = uuid.uuid4().hex
    with smtplib.SMTP(relay.host, relay.port, timeout=30) as client:
        assert client.sendmail(SENDER, [RECIPIENT], sample_message(marker)) == {}

    [stored] = mx.wait_for_messages(1)
    assert f"body {marker}".encode() in stored
    at_mx, at_relay = received_headers(stored)
    assert "by mx.clinique-b.test" in at_mx
    assert 'Client CN "hospital.chu-a.test"' in at_mx and "(verified OK)" in at_mx
    assert "by hospital.chu-a.test" in at_relay
    assert "Verified TLS connection established to 127.0.0.1" in relay.maillog()


def test_stop_leaves_no_process(postfix_mx: PostfixInstance) -> None:
    assert postfix_mx.daemon is not None
    master = postfix_mx.daemon.pid
    postfix_mx.stop()
    pgrep = subprocess.run(
        ["pgrep", "-f", postfix_mx.directory.name], capture_output=True, text=True
    )
    assert pgrep.returncode == 1, pgrep.stdout
    assert live_processes(sessions=[master], groups=[master]) == []
