"""The relay's SMTP client: sans-IO pieces, then real peers (capture sink, Postfix)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import replace

import pytest
from cryptography import x509

from gateway.config.values import HostPort
from gateway.pki.dev import DevPki, init_dev_pki
from gateway.relay.client import (
    DotStuffer,
    Outcome,
    ProtocolError,
    RelayClient,
    Reply,
    ReplyParser,
    mail_command,
    parse_extensions,
    rcpt_command,
    xtext,
)
from gateway.relay.mx import MxResolver, make_resolver
from gateway.spool.model import Envelope, MailParams, Recipient
from tests.peers.dns_server import DnsServer
from tests.peers.fixtures import ca_bundle
from tests.peers.postfix import PostfixInstance
from tests.peers.small_fixtures import sink_tls_context
from tests.peers.smtp_sink import SmtpSink, server_tls_context
from tests.relay.client_helpers import (
    MESSAGE,
    OUR_HOSTNAME,
    SENDER,
    content_of,
    envelope,
    relay_clients_fixture,  # noqa: F401 (the relay_clients fixture)
    static_route,
    trust_section,
)

# -- sans-IO -----------------------------------------------------------------------------


def _stuff(*chunks: bytes) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.feed(chunk) for chunk in chunks) + stuffer.finish()


def test_dot_stuffing_and_line_ends_across_chunks() -> None:
    assert _stuff(b".a\r\nb\r\n.") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert _stuff(b"x\r", b"\n.y\r\n") == b"x\r\n..y\r\n.\r\n"
    assert _stuff(b"x\r", b".y") == b"x\r\n..y\r\n.\r\n"  # bare CR becomes CRLF
    assert _stuff(b"a\n.\nb") == b"a\r\n..\r\nb\r\n.\r\n"  # bare LF: no smuggled end
    assert _stuff(b"a\r\n", b"", b".b\r\n") == b"a\r\n..b\r\n.\r\n"
    assert _stuff(b"") == b".\r\n"


def test_reply_parser_multiline_and_enhanced_code() -> None:
    parser = ReplyParser()
    assert parser.feed(b"250-mx.test greets you\r\n") is None
    reply = parser.feed(b"250 DSN\r\n")
    assert reply == Reply(250, ("mx.test greets you", "DSN"))
    assert parse_extensions(reply) == {"DSN": ""}
    refused = ReplyParser().feed(b"550 5.1.1 no such user\r\n")
    assert refused is not None
    assert Outcome.from_reply(refused) == Outcome(550, "5.1.1", "5.1.1 no such user", True)
    assert Outcome.from_reply(Reply(452, ("busy",))).enhanced == "4.0.0"
    with pytest.raises(ProtocolError):
        ReplyParser().feed(b"hello\r\n")
    with pytest.raises(ProtocolError):
        mixed = ReplyParser()
        mixed.feed(b"250-a\r\n")
        mixed.feed(b"251 b\r\n")


def test_dsn_parameters_only_when_the_peer_offers_dsn() -> None:
    env = Envelope(
        SENDER,
        (Recipient("bob@clinique-b.test", notify=("SUCCESS", "FAILURE"), orcpt="rfc822;b+x@c"),),
        MailParams(size=10, ret="HDRS", envid="id=1"),
    )
    with_dsn = {"DSN": "", "SIZE": "1000"}
    assert mail_command(env, with_dsn, 10) == (
        f"MAIL FROM:<{SENDER}> SIZE=10 RET=HDRS ENVID=id+3D1",
        True,
    )
    assert rcpt_command(env.recipients[0], True) == (
        "RCPT TO:<bob@clinique-b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@c"
    )
    assert mail_command(env, {}, 10) == (f"MAIL FROM:<{SENDER}>", False)
    assert rcpt_command(env.recipients[0], False) == "RCPT TO:<bob@clinique-b.test>"
    assert xtext("é") == "+C3+A9"


# -- real peers: the capture sink ----------------------------------------------------------


async def test_verified_delivery_presents_our_certificate(
    smtp_sink: SmtpSink, dev_pki: DevPki, relay_clients: Callable[..., RelayClient]
) -> None:
    client = relay_clients()
    result = await client.deliver(
        static_route(smtp_sink.port), envelope("bob@clinique-b.test"), content_of(MESSAGE)
    )
    assert result.per_recipient["bob@clinique-b.test"].delivered
    assert result.peer_verified and result.tls_version in ("TLSv1.2", "TLSv1.3")
    assert result.peer_dn is not None and "CN=mx.clinique-b.test" in result.peer_dn
    (message,) = smtp_sink.wait_for_messages(1)
    assert message.data == MESSAGE  # dot-stuffing undone by the peer: byte-exact
    assert message.tls is not None and message.peer_certificate is not None
    ours = x509.load_pem_x509_certificates(dev_pki.server_cert(OUR_HOSTNAME).read_bytes())[0]
    assert x509.load_der_x509_certificate(message.peer_certificate) == ours
    assert message.helo == OUR_HOSTNAME
    assert message.tls.server_name == "mx.clinique-b.test"  # SNI = the reference name


async def test_wrong_tls_name_is_refused_and_nothing_is_sent(
    smtp_sink: SmtpSink, dev_pki: DevPki, relay_clients: Callable[..., RelayClient]
) -> None:
    client = relay_clients()
    route = static_route(smtp_sink.port, tls_name="mx.other.test")
    result = await client.deliver(route, envelope("bob@clinique-b.test"), content_of(MESSAGE))
    outcome = result.per_recipient["bob@clinique-b.test"]
    assert not outcome.delivered and not outcome.permanent
    assert "mx.other.test" in outcome.text
    assert smtp_sink.messages == []
    sent = _client_lines(smtp_sink)
    assert sent[:2] == [f"EHLO {OUR_HOSTNAME}", "STARTTLS"]
    assert not any(line.upper().startswith(("MAIL", "EHLO", "RCPT")) for line in sent[2:])


def _client_lines(sink: SmtpSink) -> list[str]:
    """What the client sent, as the sink's transcript records it (``C: ...``)."""
    return [line.removeprefix("C: ") for line in sink.transcript if line.startswith("C: ")]


async def test_route_anchor_of_another_pki_is_untrusted_never_clear(
    smtp_sink: SmtpSink,
    dev_pki: DevPki,
    tmp_path_factory: pytest.TempPathFactory,
    relay_clients: Callable[..., RelayClient],
) -> None:
    other = init_dev_pki(tmp_path_factory.mktemp("other") / "pki", users=(), servers=())
    trust = replace(
        trust_section(dev_pki),
        anchors=(other.root_cert,),
        intermediates=(other.intermediates,),
        crls=(other.crl("serveurs"),),
    )
    client = relay_clients(trust=trust)
    result = await client.deliver(
        static_route(smtp_sink.port), envelope("bob@clinique-b.test"), content_of(MESSAGE)
    )
    outcome = result.per_recipient["bob@clinique-b.test"]
    assert not outcome.delivered and not outcome.permanent and outcome.enhanced == "4.7.5"
    assert smtp_sink.messages == []
    assert smtp_sink.connection_count == 1  # no second, clear-text attempt


async def test_revoked_server_certificate_is_refused(
    smtp_sink_factory: Callable[..., SmtpSink],
    dev_pki: DevPki,
    tmp_path_factory: pytest.TempPathFactory,
    relay_clients: Callable[..., RelayClient],
) -> None:
    directory = tmp_path_factory.mktemp("revoked")
    cert = dev_pki.issue_server("mx.clinique-b.test", path=directory / "revoked.crt")
    dev_pki.revoke(cert)
    context = server_tls_context(cert, cert.with_suffix(".key"), client_cas=[ca_bundle(dev_pki)])
    sink = smtp_sink_factory(hostname="mx.clinique-b.test", tls=context)
    client = relay_clients()
    result = await client.deliver(
        static_route(sink.port), envelope("bob@clinique-b.test"), content_of(MESSAGE)
    )
    outcome = result.per_recipient["bob@clinique-b.test"]
    assert not outcome.delivered and not outcome.permanent
    assert "revoked" in outcome.text
    assert sink.messages == []


async def test_connection_reuse_for_two_messages(
    smtp_sink: SmtpSink, dev_pki: DevPki, relay_clients: Callable[..., RelayClient]
) -> None:
    client = relay_clients()
    route = static_route(smtp_sink.port)
    for number in range(2):
        result = await client.deliver(
            route, envelope(f"r{number}@clinique-b.test"), content_of(MESSAGE)
        )
        assert result.per_recipient[f"r{number}@clinique-b.test"].delivered
    assert len(smtp_sink.wait_for_messages(2)) == 2
    assert smtp_sink.connection_count == 1


async def test_per_recipient_replies(
    smtp_sink: SmtpSink, dev_pki: DevPki, relay_clients: Callable[..., RelayClient]
) -> None:
    smtp_sink.refuse_recipient("gone@clinique-b.test", 550)
    smtp_sink.refuse_recipient("full@clinique-b.test", 452)
    client = relay_clients()
    env = envelope("bob@clinique-b.test", "gone@clinique-b.test", "full@clinique-b.test")
    result = await client.deliver(static_route(smtp_sink.port), env, content_of(MESSAGE))
    outcomes = result.per_recipient
    assert outcomes["bob@clinique-b.test"].delivered
    assert outcomes["gone@clinique-b.test"].permanent
    assert outcomes["gone@clinique-b.test"].enhanced == "5.1.1"
    assert not outcomes["full@clinique-b.test"].permanent
    assert outcomes["full@clinique-b.test"].code == 452
    smtp_sink.fail_next("DATA", 451)
    later = await client.deliver(
        static_route(smtp_sink.port), envelope("bob@clinique-b.test"), content_of(MESSAGE)
    )
    smtp_sink.fail_next("MAIL", 554)
    refused = await client.deliver(
        static_route(smtp_sink.port), envelope("bob@clinique-b.test"), content_of(MESSAGE)
    )
    assert later.per_recipient["bob@clinique-b.test"].code == 451
    assert not later.per_recipient["bob@clinique-b.test"].permanent
    assert refused.per_recipient["bob@clinique-b.test"].permanent
    (message,) = smtp_sink.wait_for_messages(1)
    assert message.recipients == ("bob@clinique-b.test",)


@pytest.mark.parametrize("limit", [1, 2])
async def test_concurrency_per_destination_bounds_sessions(
    smtp_sink: SmtpSink, dev_pki: DevPki, limit: int, relay_clients: Callable[..., RelayClient]
) -> None:
    client = relay_clients(concurrency=limit)
    route = static_route(smtp_sink.port)
    results = await asyncio.gather(
        *(
            client.deliver(route, envelope(f"r{n}@clinique-b.test"), content_of(MESSAGE))
            for n in range(2)
        )
    )
    assert all(o.delivered for r in results for o in r.per_recipient.values())
    assert len(smtp_sink.wait_for_messages(2)) == 2
    # limit 1: the second message waits and reuses the first session; limit 2: both
    # start at once, so each needs a session of its own.
    assert smtp_sink.connection_count == limit


def _closed_port() -> int:
    """A port on 127.0.0.2 where nothing listens (bound then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        return int(probe.getsockname()[1])


async def test_mx_fall_through_when_first_mx_refuses(
    smtp_sink: SmtpSink,
    dev_pki: DevPki,
    dns_server: DnsServer,
    relay_clients: Callable[..., RelayClient],
) -> None:
    # Both MX hosts use the sink's port; the preferred one lives on 127.0.0.2 where
    # nothing listens on it, so its connection is refused.
    with socket.socket() as probe:  # make sure 127.0.0.2 has nothing on the sink's port
        assert probe.connect_ex(("127.0.0.2", smtp_sink.port)) != 0
    dns_server.add_mx("clinique-b.test", 10, "mx1.clinique-b.test")
    dns_server.add_mx("clinique-b.test", 20, "mx.clinique-b.test")
    dns_server.add_a("mx1.clinique-b.test", "127.0.0.2")
    dns_server.add_a("mx.clinique-b.test", "127.0.0.1")
    resolver = MxResolver(
        make_resolver([HostPort(dns_server.host, dns_server.port)]), mx_port=smtp_sink.port
    )
    client = relay_clients(resolver=resolver)
    route = static_route(0, next_hop=None, tls_name=None)
    result = await client.deliver(route, envelope("bob@clinique-b.test"), content_of(MESSAGE))
    assert result.per_recipient["bob@clinique-b.test"].delivered
    assert result.mx_host == "mx.clinique-b.test"
    assert len(result.attempts) == 1 and "mx1.clinique-b.test" in result.attempts[0]


async def test_every_host_failing_is_temporary_for_every_recipient(
    dev_pki: DevPki, relay_clients: Callable[..., RelayClient]
) -> None:
    client = relay_clients()
    route = static_route(0, next_hop=HostPort("127.0.0.2", _closed_port()))
    result = await client.deliver(
        route, envelope("a@clinique-b.test", "b@clinique-b.test"), content_of(MESSAGE)
    )
    assert set(result.per_recipient) == {"a@clinique-b.test", "b@clinique-b.test"}
    assert all(
        not o.permanent and o.code == 451 and "cannot connect" in o.text
        for o in result.per_recipient.values()
    )


async def test_verify_route_never_sends_in_clear_when_starttls_missing(
    smtp_sink_factory: Callable[..., SmtpSink],
    dev_pki: DevPki,
    relay_clients: Callable[..., RelayClient],
) -> None:
    clear = smtp_sink_factory(hostname="mx.clinique-b.test")  # no STARTTLS offered
    client = relay_clients()
    result = await client.deliver(
        static_route(clear.port), envelope("bob@clinique-b.test"), content_of(MESSAGE)
    )
    assert "STARTTLS not offered" in result.per_recipient["bob@clinique-b.test"].text
    assert clear.messages == []
    opportunistic = static_route(clear.port, tls="opportunistic")
    client = relay_clients()
    result = await client.deliver(
        opportunistic, envelope("bob@clinique-b.test"), content_of(MESSAGE)
    )
    assert result.per_recipient["bob@clinique-b.test"].delivered
    assert result.tls_version is None and not result.peer_verified


async def test_opportunistic_encrypts_without_verifying(
    smtp_sink_factory: Callable[..., SmtpSink],
    dev_pki: DevPki,
    relay_clients: Callable[..., RelayClient],
) -> None:
    sink = smtp_sink_factory(hostname="mx.clinique-b.test", tls=sink_tls_context(dev_pki))
    client = relay_clients()
    route = static_route(sink.port, tls="opportunistic", tls_name="mx.other.test")
    result = await client.deliver(route, envelope("bob@clinique-b.test"), content_of(MESSAGE))
    assert result.per_recipient["bob@clinique-b.test"].delivered
    assert result.tls_version is not None and not result.peer_verified
    (message,) = sink.wait_for_messages(1)
    assert message.tls is not None


async def test_size_over_the_peer_limit_is_permanent(
    smtp_sink_factory: Callable[..., SmtpSink],
    dev_pki: DevPki,
    relay_clients: Callable[..., RelayClient],
) -> None:
    sink = smtp_sink_factory(
        hostname="mx.clinique-b.test", tls=sink_tls_context(dev_pki), max_message_size=100
    )
    client = relay_clients()
    result = await client.deliver(
        static_route(sink.port), envelope("bob@clinique-b.test"), content_of(MESSAGE), size=500
    )
    outcome = result.per_recipient["bob@clinique-b.test"]
    assert outcome.permanent and outcome.enhanced == "5.3.4"
    assert sink.messages == []


# -- real peer: Postfix requiring our client certificate ---------------------------------


async def test_postfix_requiring_client_certificate_receives(
    postfix_mx_factory: Callable[..., PostfixInstance],
    dev_pki: DevPki,
    relay_clients: Callable[..., RelayClient],
) -> None:
    postfix = postfix_mx_factory(require_client_cert=True)
    client = relay_clients()
    env = envelope("bob@clinique-b.test", "carol@clinique-b.test")
    result = await client.deliver(static_route(postfix.port), env, content_of(MESSAGE))
    assert all(o.delivered for o in result.per_recipient.values()), result
    assert result.peer_verified and result.peer_dn is not None
    stored = postfix.wait_for_messages(2)
    for raw in stored:
        assert b"Message-ID: <relay-test@chu-a.test>" in raw
        assert b"\n.starts with a dot\n" in raw  # unstuffed by Postfix (Maildir: LF)
        assert b"TLS" in raw  # Postfix records TLS use in Received:
