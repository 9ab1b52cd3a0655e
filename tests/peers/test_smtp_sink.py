"""The capture SMTP sink, driven by the standard library's smtplib (a real SMTP client)."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.pki.dev import DevPki
from tests.peers.fixtures import ca_bundle
from tests.peers.small_fixtures import SINK_HOSTNAME, sink_tls_context
from tests.peers.smtp_sink import SinkError, SmtpSink

CLIENT_HOST = "hospital.chu-a.test"
MESSAGE = b"From: <alice.martin@chu-a.test>\r\nTo: <claire.durand@clinique-b.test>\r\n\r\nbody\r\n"


def client_context(pki: DevPki, *, with_certificate: bool = True) -> ssl.SSLContext:
    """A client that verifies the sink against the dev PKI (by its IP SAN) and, unless
    told otherwise, presents the hospital relay's certificate."""
    context = ssl.create_default_context(cafile=ca_bundle(pki))
    if with_certificate:
        context.load_cert_chain(pki.server_cert(CLIENT_HOST), pki.server_key(CLIENT_HOST))
    return context


def der_of(pki: DevPki, hostname: str) -> bytes:
    leaf = x509.load_pem_x509_certificates(pki.server_cert(hostname).read_bytes())[0]
    return leaf.public_bytes(Encoding.DER)


def open_client(sink: SmtpSink) -> smtplib.SMTP:
    return smtplib.SMTP(sink.host, sink.port, local_hostname=CLIENT_HOST, timeout=10)


def test_starttls_with_client_certificate_is_recorded(smtp_sink: SmtpSink, dev_pki: DevPki) -> None:
    with open_client(smtp_sink) as client:
        code, banner = client.ehlo()
        assert code == 250 and b"STARTTLS" in banner
        client.starttls(context=client_context(dev_pki))
        client.ehlo()
        client.sendmail("alice.martin@chu-a.test", ["claire.durand@clinique-b.test"], MESSAGE)

    (message,) = smtp_sink.wait_for_messages(1)
    assert message.mail_from == "alice.martin@chu-a.test"
    assert message.recipients == ("claire.durand@clinique-b.test",)
    assert message.data == MESSAGE
    assert message.helo == CLIENT_HOST
    assert message.tls_version == "TLSv1.3"
    assert message.peer_certificate == der_of(dev_pki, CLIENT_HOST)
    assert message.parsed()["To"].addresses[0].addr_spec == "claire.durand@clinique-b.test"
    assert smtp_sink.hostname == SINK_HOSTNAME


def test_tls_without_client_certificate_and_tls_1_2(
    smtp_sink_factory: Callable[..., SmtpSink], dev_pki: DevPki
) -> None:
    sink = smtp_sink_factory(tls=sink_tls_context(dev_pki))
    context = client_context(dev_pki, with_certificate=False)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with open_client(sink) as client:
        client.starttls(context=context)
        client.sendmail("a@chu-a.test", ["b@clinique-b.test"], MESSAGE)
    (message,) = sink.wait_for_messages(1)
    assert message.tls_version == "TLSv1.2"
    assert message.peer_certificate is None


def test_forced_451_at_rcpt_then_success(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_next("RCPT", 451)
    with open_client(smtp_sink) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("a@chu-a.test", ["b@clinique-b.test"], MESSAGE)
        assert refused.value.recipients["b@clinique-b.test"][0] == 451
        client.sendmail("a@chu-a.test", ["b@clinique-b.test"], MESSAGE)
    assert len(smtp_sink.wait_for_messages(1)) == 1
    assert smtp_sink.messages[0].recipients == ("b@clinique-b.test",)


def test_forced_data_failures_are_not_recorded(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_next("DATA", 452, count=2, text="4.3.1 queue full")
    with open_client(smtp_sink) as client:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPDataError) as failed:
                client.sendmail("a@chu-a.test", ["b@clinique-b.test"], MESSAGE)
            assert failed.value.smtp_code == 452
            assert failed.value.smtp_error == b"4.3.1 queue full"
        client.sendmail("a@chu-a.test", ["b@clinique-b.test"], MESSAGE)
    assert [m.queue_id for m in smtp_sink.wait_for_messages(1)] == [1]


def test_permanent_refusal_of_one_recipient(smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse_recipient("gone@clinique-b.test")
    with open_client(smtp_sink) as client:
        refused = client.sendmail(
            "a@chu-a.test", ["gone@clinique-b.test", "b@clinique-b.test"], MESSAGE
        )
    assert refused == {"gone@clinique-b.test": (550, b"5.1.1 sink: mailbox refused")}
    assert smtp_sink.wait_for_messages(1)[0].recipients == ("b@clinique-b.test",)


def test_dsn_parameters_are_recorded_verbatim(smtp_sink: SmtpSink) -> None:
    with open_client(smtp_sink) as client:
        client.sendmail(
            "a@chu-a.test",
            ["b@clinique-b.test"],
            MESSAGE,
            mail_options=["RET=HDRS", "ENVID=Q1b2-x"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@clinique-b.test"],
        )
    (message,) = smtp_sink.wait_for_messages(1)
    # smtplib adds SIZE itself, in lower case: kept as sent, like the rest
    assert message.mail_params == (f"size={len(MESSAGE)}", "RET=HDRS", "ENVID=Q1b2-x")
    assert message.rcpt_params == (("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@clinique-b.test"),)


def test_bare_lf_does_not_end_data_and_bytes_are_kept(smtp_sink: SmtpSink) -> None:
    # "\n.\n" ends DATA for a lax server (SMTP smuggling); only CRLF.CRLF may.
    smuggling = b"Subject: x\r\n\r\nfirst\n.\nMAIL FROM:<evil@x.test>\r\n..dots\r\n"
    with open_client(smtp_sink) as client:
        client.sendmail("a@chu-a.test", ["b@clinique-b.test"], smuggling)
    (message,) = smtp_sink.wait_for_messages(1)
    assert message.data == smuggling
    assert smtp_sink.connection_count == 1


def test_require_tls_refuses_mail_in_clear(
    smtp_sink_factory: Callable[..., SmtpSink], dev_pki: DevPki
) -> None:
    sink = smtp_sink_factory(tls=sink_tls_context(dev_pki), require_tls=True)
    with open_client(sink) as client:
        client.ehlo()
        code, text = client.mail("a@chu-a.test")
    assert (code, text) == (530, b"5.7.0 must issue a STARTTLS command first")
    assert sink.messages == []


def test_client_not_trusting_the_dev_pki_gets_no_session(smtp_sink: SmtpSink) -> None:
    untrusting = ssl.create_default_context()  # system roots: the dev PKI is unknown
    with open_client(smtp_sink) as client, pytest.raises(ssl.SSLCertVerificationError):
        client.starttls(context=untrusting)
    assert smtp_sink.messages == []


async def test_usable_from_an_async_test(smtp_sink: SmtpSink) -> None:
    def send() -> None:
        with open_client(smtp_sink) as client:
            client.sendmail("a@chu-a.test", ["b@clinique-b.test"], MESSAGE)

    waiting = asyncio.create_task(smtp_sink.wait_for_messages_async(1))
    await asyncio.to_thread(send)
    (message,) = await waiting
    assert message.tls is None


async def test_sni_name_is_recorded_for_an_asyncio_client(
    smtp_sink: SmtpSink, dev_pki: DevPki
) -> None:
    reader, writer = await asyncio.open_connection(smtp_sink.host, smtp_sink.port)

    async def command(line: bytes) -> bytes:
        writer.write(line + b"\r\n")
        reply = b""
        while not reply[3:4] == b" ":  # last line of a reply: "250 ..."
            reply = await reader.readline()
        return reply[:3]

    assert (await reader.readline()).startswith(b"220 ")
    assert await command(b"EHLO " + CLIENT_HOST.encode()) == b"250"
    assert await command(b"STARTTLS") == b"220"
    await writer.start_tls(client_context(dev_pki), server_hostname=SINK_HOSTNAME)
    for line in (b"EHLO " + CLIENT_HOST.encode(), b"MAIL FROM:<>", b"RCPT TO:<b@clinique-b.test>"):
        assert (await command(line)).startswith(b"25")
    assert await command(b"DATA") == b"354"
    assert await command(MESSAGE + b".") == b"250"
    assert await command(b"QUIT") == b"221"
    writer.close()
    await writer.wait_closed()

    (message,) = await smtp_sink.wait_for_messages_async(1)
    assert message.tls is not None and message.tls.server_name == SINK_HOSTNAME
    assert message.mail_from == ""  # the null reverse-path of a bounce


def test_forced_reply_to_mail_from(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_next("MAIL", 421, text="4.3.2 shutting down")
    with open_client(smtp_sink) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("a@chu-a.test", ["b@clinique-b.test"], MESSAGE)
        assert refused.value.smtp_code == 421
    assert smtp_sink.messages == []
    assert "S: 421 4.3.2 shutting down" in smtp_sink.transcript


def test_stop_closes_the_port(smtp_sink_factory: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink_factory()
    with open_client(sink) as client:
        assert client.noop()[0] == 250
        sink.stop()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(sink.address, timeout=5).close()
    assert not sink.running


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(SinkError):
        SmtpSink(require_tls=True)
    with pytest.raises(SinkError):
        SmtpSink().fail_next("RCPT", 250)
