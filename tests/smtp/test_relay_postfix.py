"""A real Postfix, set up as a hospital mail server, relays to the relay listener over
mandatory verified TLS with its client certificate; the listener knows it as a relay
client by its certificate DN and spools the message in the real durable spool."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography import x509

from gateway.pki.dev import DevPki
from gateway.spool import RECEIVED, Spool
from tests.peers.postfix import PostfixInstance

from .front import RELAY, RecordingAudit, in_thread, running_front, write_config

pytestmark = pytest.mark.peer

HOSPITAL = "hospital.chu-a.test"
ALICE = "alice.martin@chu-a.test"
OUTSIDE = "dr.house@example.org"


def hospital_dn(pki: DevPki) -> str:
    cert = x509.load_pem_x509_certificate(pki.server_cert(HOSPITAL).read_bytes())
    return cert.subject.rfc4514_string()


def send_to_hospital(relay: PostfixInstance, sender: str, recipient: str) -> None:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = "test"
    message.set_content("Compte rendu.\n")
    with smtplib.SMTP(relay.host, relay.port, timeout=30) as client:
        assert client.send_message(message) == {}


async def wait_until(check: Callable[[], object], explain: Callable[[], str]) -> None:
    """Poll ``check`` until truthy; the 30 s deadline catches a hang, not a speed."""
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(explain())
        await asyncio.sleep(0.05)


async def test_postfix_hospital_relays_outbound_mail(
    tmp_path: Path, dev_pki: DevPki, postfix_relay: Callable[..., PostfixInstance]
) -> None:
    listeners = (
        RELAY.replace('client_certificate = "optional"', 'client_certificate = "required"')
        + f'relay_clients = ["dn:{hospital_dn(dev_pki)}"]\n'
    )
    config = write_config(tmp_path, dev_pki, listeners, accept="signed")
    audit = RecordingAudit()
    spool = Spool(tmp_path / "spool", audit=audit, actor="smtp", max_message_size=1 << 20)
    received = spool.queue(RECEIVED)
    try:
        async with running_front(config, dev_pki, queue=received) as front:  # type: ignore[arg-type]
            relay = postfix_relay(front.group.address("mx"), tls_level="verify")
            await in_thread(lambda: send_to_hospital(relay, ALICE, OUTSIDE))
            # spool.added is committed before the entry is linked into incoming/ (the 250
            # comes after both): wait for the file, not for the event
            incoming = tmp_path / "spool" / RECEIVED / "incoming"
            await wait_until(
                lambda: any(incoming.iterdir()), lambda: "not spooled:\n" + relay.maillog()
            )
            assert audit.of_type("spool.added")
            [entry] = await received.scan("incoming")
    finally:
        await spool.aclose()
    record = entry.record
    assert record is not None
    assert record.envelope.mail_from == ALICE
    assert record.envelope.addresses == (OUTSIDE,)
    assert record.origin.client_cert_dn == hospital_dn(dev_pki)
    assert record.origin.tls_version in ("TLSv1.2", "TLSv1.3")
    assert "250 2.0.0" in relay.maillog(200)
