"""TLS on the relay listener: client certificates validated with revocation, the liste
blanche (trust-space), relay clients named by certificate DN, and RFC 3207 §4.2
(commands pipelined after STARTTLS are discarded)."""

from __future__ import annotations

import smtplib
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from gateway.pki.dev import DevPki
from gateway.smtp.listener import ConnectionGate
from gateway.smtp.tls import server_context

from .front import (
    RELAY,
    FakeListeBlanche,
    Front,
    client_context,
    in_thread,
    message,
    running_front,
    write_config,
)

CLINIC = "mx.clinique-b.test"
HOSPITAL = "hospital.chu-a.test"
SENDER = "dr.house@clinique-b.test"
ALICE = "alice.martin@chu-a.test"


def subject(path: Path) -> x509.Name:
    return x509.load_pem_x509_certificate(path.read_bytes()).subject


def send_with_certificate(
    front: Front, cert: Path, key: Path, sender: str, recipient: str, from_header: str
) -> int:
    """The final reply code of a transaction over STARTTLS with a client certificate."""
    context = client_context(front.ca_file, cert, key)
    with smtplib.SMTP("127.0.0.1", front.port("mx"), timeout=30) as client:
        client.starttls(context=context)
        client.ehlo("client.test")
        try:
            client.sendmail(sender, [recipient], message(from_header, recipient))
        except smtplib.SMTPSenderRefused as error:
            return error.smtp_code
        except smtplib.SMTPRecipientsRefused as error:
            return next(iter(error.recipients.values()))[0]
        except smtplib.SMTPDataError as error:
            return error.smtp_code
    return 250


@pytest.fixture
def liste_blanche(dev_pki: DevPki) -> FakeListeBlanche:
    return FakeListeBlanche({"clinique-b.test": [subject(dev_pki.server_cert(CLINIC))]})


async def test_trust_space_operator_certificate_accepted(
    tmp_path: Path, dev_pki: DevPki, liste_blanche: FakeListeBlanche
) -> None:
    config = write_config(tmp_path, dev_pki, RELAY, accept="trust-space")
    cert, key = dev_pki.server_cert(CLINIC), dev_pki.server_key(CLINIC)
    async with running_front(config, dev_pki, liste_blanche=liste_blanche) as front:
        code = await in_thread(
            lambda: send_with_certificate(front, cert, key, SENDER, ALICE, SENDER)
        )
    assert code == 250
    [stored] = front.queue.messages
    assert stored.origin.client_cert_dn == subject(cert).rfc4514_string()


async def test_trust_space_other_operator_refused(
    tmp_path: Path, dev_pki: DevPki, liste_blanche: FakeListeBlanche
) -> None:
    config = write_config(tmp_path, dev_pki, RELAY, accept="trust-space")
    cert, key = dev_pki.server_cert(HOSPITAL), dev_pki.server_key(HOSPITAL)
    async with running_front(config, dev_pki, liste_blanche=liste_blanche) as front:
        code = await in_thread(
            lambda: send_with_certificate(front, cert, key, SENDER, ALICE, SENDER)
        )
    assert code == 550
    assert front.queue.messages == []


async def test_trust_space_from_header_checked_after_data(
    tmp_path: Path, dev_pki: DevPki, liste_blanche: FakeListeBlanche
) -> None:
    config = write_config(tmp_path, dev_pki, RELAY, accept="trust-space")
    cert, key = dev_pki.server_cert(CLINIC), dev_pki.server_key(CLINIC)
    async with running_front(config, dev_pki, liste_blanche=liste_blanche) as front:
        code = await in_thread(
            lambda: send_with_certificate(front, cert, key, SENDER, ALICE, "x@elsewhere.test")
        )
        stages = [e.details["stage"] for e in front.audit.of_type("smtp.refused")]
    assert code == 550
    assert stages == ["data"]


async def test_revoked_client_certificate_refused(tmp_path: Path, dev_pki: DevPki) -> None:
    cert = dev_pki.issue_server("revoked.clinique-b.test")
    dev_pki.revoke(cert)
    config = write_config(tmp_path, dev_pki, RELAY, accept="any")
    async with running_front(config, dev_pki) as front:
        key = cert.with_suffix(".key")
        code = await in_thread(
            lambda: send_with_certificate(front, cert, key, SENDER, ALICE, SENDER)
        )
        tls_refusals = [
            e for e in front.audit.of_type("smtp.refused") if e.details["stage"] == "tls"
        ]
    assert code == 550
    assert front.queue.messages == []
    assert tls_refusals and "revoked" in tls_refusals[0].details["reason"]


async def test_relay_client_by_certificate_dn(tmp_path: Path, dev_pki: DevPki) -> None:
    hospital_dn = subject(dev_pki.server_cert(HOSPITAL)).rfc4514_string()
    listeners = RELAY + f'relay_clients = ["dn:{hospital_dn}"]\n'
    config = write_config(tmp_path, dev_pki, listeners, accept="signed")
    cert, key = dev_pki.server_cert(HOSPITAL), dev_pki.server_key(HOSPITAL)
    outside = "someone@example.org"
    async with running_front(config, dev_pki) as front:
        good = await in_thread(
            lambda: send_with_certificate(front, cert, key, ALICE, outside, ALICE)
        )
        bad = await in_thread(
            lambda: send_with_certificate(front, cert, key, ALICE, outside, "x@other.test")
        )
        stranger = await in_thread(
            lambda: send_with_certificate(
                front,
                dev_pki.server_cert(CLINIC),
                dev_pki.server_key(CLINIC),
                SENDER,
                outside,
                SENDER,
            )
        )
    assert (good, bad, stranger) == (250, 550, 554)
    assert [m.envelope.addresses for m in front.queue.messages] == [(outside,)]


async def test_commands_pipelined_with_starttls_are_discarded(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    config = write_config(tmp_path, dev_pki, RELAY, accept="any")
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")

        def exchange() -> list[str]:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                plain = raw.makefile("rb")
                lines = [plain.readline().decode()]
                raw.sendall(b"EHLO probe\r\n")
                while not plain.readline().decode().startswith("250 "):
                    pass
                raw.sendall(b"STARTTLS\r\nMAIL FROM:<someone@clinique-b.test>\r\n")
                lines.append(plain.readline().decode())
                context = client_context(front.ca_file)
                with context.wrap_socket(raw, server_hostname="mx.chu-a.test") as tls:
                    secure = tls.makefile("rb")
                    tls.sendall(b"EHLO probe\r\n")
                    while not secure.readline().decode().startswith("250 "):
                        pass
                    tls.sendall(b"RCPT TO:<alice.martin@chu-a.test>\r\n")
                    lines.append(secure.readline().decode())
                    secure.close()
                plain.close()
            return lines

        lines = await in_thread(exchange)
    assert lines[1].startswith("220")
    assert lines[2].startswith("503 5.5.1"), lines  # the pipelined MAIL never happened


def test_server_context_minimum_version_and_client_request(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    context = server_context(config, config.listeners[0])
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_OPTIONAL  # client_certificate = "optional"


def test_configured_ciphers_apply_to_tls12(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY, ciphers="ECDHE+AESGCM")
    context = server_context(config, config.listeners[0])
    assert context is not None
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all("GCM" in name and name.startswith("ECDHE") for name in tls12)


def test_connection_gate_limits_total_and_per_ip() -> None:
    gate = ConnectionGate(total=3, per_ip=2)
    assert gate.try_acquire("a") and gate.try_acquire("a")
    assert not gate.try_acquire("a")  # per IP
    assert gate.try_acquire("b")
    assert not gate.try_acquire("c")  # total
    gate.release("a")
    assert gate.try_acquire("c") and gate.open == 3
