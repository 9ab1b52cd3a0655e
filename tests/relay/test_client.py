"""The relay's SMTP client: sans-IO pieces, then real peers (capture sink, Postfix)."""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from cryptography import x509

from gateway.config.hosts import HostPort
from gateway.pki.dev import DevPki, init_dev_pki
from gateway.relay.client import RelayClient
from gateway.relay.mx import MxResolver, make_resolver
from gateway.relay.smtp_commands import mail_command, rcpt_command, xtext
from gateway.relay.smtp_data import DotStuffer, has_bare_line_end
from gateway.relay.smtp_reply import Outcome, ProtocolError, Reply, ReplyParser, parse_extensions
from gateway.spool.model import Envelope, MailParams, Recipient
from tests.peers.dns_server import DnsServer
from tests.peers.fixtures import ca_bundle
from tests.peers.postfix import PostfixInstance, set_recipient_access
from tests.peers.small_fixtures import sink_tls_context
from tests.peers.smtp_sink import SmtpSink, server_tls_context
from tests.relay.client_helpers import (
    MESSAGE,
    OUR_HOSTNAME,
    SENDER,
    LockstepHandler,
    RecordingProxy,
    ScriptedPeer,
    command_chunks,
    content_of,
    envelope,
    lockstep_server_fixture,  # noqa: F401 (the lockstep_server fixture)
    recording_proxy_fixture,  # noqa: F401 (the recording_proxy fixture)
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


def _reference_data(content: bytes) -> bytes:
    """DATA as RFC 5321 §4.5.2 reads it, line by line: any CR, LF or CRLF ends a line,
    a line starting with ``.`` gets one more, then ``.CRLF``."""
    lines = re.split(rb"\r\n|\r|\n", content)
    if lines[-1] == b"":
        lines.pop()
    stuffed = ((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in lines)
    return b"".join(stuffed) + b".\r\n"


@pytest.mark.parametrize("alphabet", ["canonical", "bare"])
def test_dot_stuffing_matches_the_line_by_line_reference(alphabet: str) -> None:
    pieces = [b"a", b"bc", b".", b"..", b"\r\n", b"\r\n."]
    if alphabet == "bare":
        pieces += [b"\r", b"\n", b"\n.", b"\r."]
    rng = random.Random(2920)
    for _ in range(400):
        content = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))
        cuts = sorted(rng.sample(range(len(content) + 1), min(len(content) + 1, 3)))
        chunks = [content[a:b] for a, b in zip([0, *cuts], [*cuts, len(content)], strict=True)]
        assert _stuff(*chunks) == _reference_data(content), (content, chunks)


def test_bare_line_end_detection() -> None:
    assert not has_bare_line_end(b"")
    assert not has_bare_line_end(b"a\r\n.b\r\n")
    for bare in (b"a\nb", b"a\rb", b"a\r\r\n", b"a\r\n\n", b"\r", b"\n\r"):
        assert has_bare_line_end(bare), bare


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


def test_a_reply_code_alone_is_a_reply() -> None:
    """RFC 5321 §4.2: the text after the last line's code is optional."""
    assert ReplyParser().feed(b"250\r\n") == Reply(250, ("",))
    parser = ReplyParser()
    assert parser.feed(b"250-first\r\n") is None
    assert parser.feed(b"250\r\n") == Reply(250, ("first", ""))
    with pytest.raises(ProtocolError):
        ReplyParser().feed(b"2500\r\n")


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


# -- on the wire: PIPELINING (RFC 2920) and lock-step ----------------------------------

Proxies = Callable[[int], Awaitable[RecordingProxy]]


def _one_group(chunks: list[bytes], *addresses: str) -> bytes:
    """The single chunk that carries MAIL, every RCPT and DATA (RFC 2920 §3.1)."""
    (group,) = command_chunks(chunks, b"MAIL FROM:")
    for address in addresses:
        assert f"RCPT TO:<{address}>".encode() in group
    assert group.endswith(b"DATA\r\n") and group.count(b"DATA\r\n") == 1
    return group


async def test_pipelining_sends_the_envelope_at_once_and_keeps_each_reply(
    smtp_sink: SmtpSink, recording_proxy: Proxies, relay_clients: Callable[..., RelayClient]
) -> None:
    smtp_sink.refuse_recipient("gone@clinique-b.test", 550)
    smtp_sink.refuse_recipient("full@clinique-b.test", 452)
    proxy = await recording_proxy(smtp_sink.port)
    client = relay_clients()
    route = static_route(proxy.port, tls="none", tls_name=None)
    addresses = ("bob@clinique-b.test", "gone@clinique-b.test", "full@clinique-b.test")
    first = await client.deliver(route, envelope(*addresses), content_of(MESSAGE))
    outcomes = first.per_recipient
    assert outcomes["bob@clinique-b.test"].delivered
    assert outcomes["gone@clinique-b.test"].permanent
    assert outcomes["gone@clinique-b.test"].enhanced == "5.1.1"
    assert outcomes["full@clinique-b.test"].code == 452
    assert not outcomes["full@clinique-b.test"].permanent
    group = _one_group(proxy.sent_chunks(), *addresses)
    assert not group.startswith(b"RSET")  # a new session needs none
    (body,) = [c for c in proxy.sent_chunks() if b"Message-ID: <relay-test" in c]
    assert body.endswith(b"last line\r\n.\r\n")  # the final dot in the same write
    assert b"\r\n..starts with a dot\r\n" in body
    smtp_sink.fail_next("DATA", 451)
    second = await client.deliver(route, envelope("carol@clinique-b.test"), content_of(MESSAGE))
    assert second.per_recipient["carol@clinique-b.test"].code == 451
    reused = [c for c in command_chunks(proxy.sent_chunks(), b"MAIL FROM:") if c != group]
    assert len(reused) == 1 and reused[0].startswith(b"RSET\r\nMAIL FROM:")
    assert len(proxy.connections) == 1
    (message,) = smtp_sink.wait_for_messages(1)
    assert message.recipients == ("bob@clinique-b.test",)
    assert message.data == MESSAGE


async def test_lockstep_toward_a_server_without_pipelining(
    lockstep_server: Callable[..., tuple[LockstepHandler, int]],
    recording_proxy: Proxies,
    relay_clients: Callable[..., RelayClient],
) -> None:
    handler, port = lockstep_server(refused={"gone@clinique-b.test": "550 5.1.1 no such user"})
    proxy = await recording_proxy(port)
    client = relay_clients()
    route = static_route(proxy.port, tls="none", tls_name=None)
    first = await client.deliver(
        route, envelope("bob@clinique-b.test", "gone@clinique-b.test"), content_of(MESSAGE)
    )
    second = await client.deliver(route, envelope("carol@clinique-b.test"), content_of(MESSAGE))
    assert first.per_recipient["bob@clinique-b.test"].delivered
    gone = first.per_recipient["gone@clinique-b.test"]
    assert gone.permanent and gone.enhanced == "5.1.1"
    assert second.per_recipient["carol@clinique-b.test"].delivered
    chunks = proxy.sent_chunks()
    for verb in (b"MAIL FROM:", b"RCPT TO:", b"DATA\r\n", b"RSET\r\n"):
        found = command_chunks(chunks, verb)
        assert found, verb
        for chunk in found:  # the client waited for each reply: one command per chunk
            assert chunk.count(b"\r\n") == 1, chunk
    assert len(command_chunks(chunks, b"RSET\r\n")) == 1  # the reused session's RSET
    assert len(proxy.connections) == 1
    assert handler.messages == [
        (("bob@clinique-b.test",), MESSAGE),
        (("carol@clinique-b.test",), MESSAGE),
    ]


async def test_a_pooled_session_the_peer_closed_is_replaced_not_a_host_failure(
    smtp_sink: SmtpSink, recording_proxy: Proxies, relay_clients: Callable[..., RelayClient]
) -> None:
    proxy = await recording_proxy(smtp_sink.port)
    client = relay_clients()
    route = static_route(proxy.port, tls="none", tls_name=None)
    first = await client.deliver(route, envelope("bob@clinique-b.test"), content_of(MESSAGE))
    assert first.per_recipient["bob@clinique-b.test"].delivered
    proxy.drop_all()  # the peer hangs up on the idle session
    second = await client.deliver(route, envelope("carol@clinique-b.test"), content_of(MESSAGE))
    assert second.per_recipient["carol@clinique-b.test"].delivered, second
    assert second.attempts == ()
    assert len(proxy.connections) == 2
    assert [m.recipients for m in smtp_sink.wait_for_messages(2)] == [
        ("bob@clinique-b.test",),
        ("carol@clinique-b.test",),
    ]


@pytest.mark.parametrize(
    ("mail_reply", "rcpt_reply", "expected"),
    [
        (b"250 2.1.0 ok\r\n", b"550 5.1.1 unknown user\r\n", "5.1.1"),
        (b"550 5.7.1 sender refused\r\n", b"503 5.5.1 need MAIL first\r\n", "5.7.1"),
    ],
    ids=["rcpt-refused", "mail-refused"],
)
async def test_a_354_without_an_accepted_recipient_gets_a_lone_dot(
    relay_clients: Callable[..., RelayClient],
    mail_reply: bytes,
    rcpt_reply: bytes,
    expected: str,
) -> None:
    # RFC 2920 §3.1: the DATA reply is checked even when nothing was accepted; a peer
    # that still says 354 gets a single dot, never the message.
    peer = ScriptedPeer(
        [
            b"250-scripted.test\r\n250 PIPELINING\r\n",
            mail_reply,
            rcpt_reply,
            b"354 go ahead\r\n",
            b"554 5.5.1 no valid recipients\r\n",
            b"221 2.0.0 bye\r\n",
        ]
    )
    await peer.start()
    try:
        client = relay_clients()
        route = static_route(peer.port, tls="none", tls_name=None)
        result = await client.deliver(route, envelope("gone@clinique-b.test"), content_of(MESSAGE))
        outcome = result.per_recipient["gone@clinique-b.test"]
        assert outcome.permanent and outcome.enhanced == expected
        await client.close()
        assert peer.lines == [
            f"EHLO {OUR_HOSTNAME}\r\n".encode(),
            f"MAIL FROM:<{SENDER}>\r\n".encode(),  # no SIZE: the peer did not offer it
            b"RCPT TO:<gone@clinique-b.test>\r\n",
            b"DATA\r\n",
            b".\r\n",
            b"QUIT\r\n",
        ]
        assert not any(b"line one" in line for line in peer.lines)
    finally:
        await peer.stop()


async def test_pipelining_toward_postfix_keeps_each_recipients_reply(
    postfix_mx_factory: Callable[..., PostfixInstance],
    recording_proxy: Proxies,
    relay_clients: Callable[..., RelayClient],
) -> None:
    postfix = postfix_mx_factory(start=False)
    set_recipient_access(
        postfix,
        {
            "gone@clinique-b.test": "550 5.1.1 no such user",
            "busy@clinique-b.test": "450 4.2.1 mailbox busy",
        },
    )
    postfix.start()
    proxy = await recording_proxy(postfix.port)
    client = relay_clients()
    route = static_route(proxy.port, tls="none", tls_name=None)
    addresses = ("bob@clinique-b.test", "gone@clinique-b.test", "busy@clinique-b.test")
    first = await client.deliver(route, envelope(*addresses), content_of(MESSAGE))
    assert first.per_recipient["bob@clinique-b.test"].delivered, first
    gone, busy = (first.per_recipient[a] for a in addresses[1:])
    assert gone.code == 550 and gone.enhanced == "5.1.1" and gone.permanent
    assert busy.code == 450 and busy.enhanced == "4.2.1" and not busy.permanent
    _one_group(proxy.sent_chunks(), *addresses)
    # no recipient accepted: Postfix refuses the pipelined DATA, nothing of the body goes
    refused = await client.deliver(route, envelope(*addresses[1:]), content_of(MESSAGE))
    assert refused.per_recipient["gone@clinique-b.test"].permanent
    assert refused.per_recipient["busy@clinique-b.test"].code == 450
    later = await client.deliver(route, envelope("carol@clinique-b.test"), content_of(MESSAGE))
    assert later.per_recipient["carol@clinique-b.test"].delivered, later
    chunks = proxy.sent_chunks()
    assert len([c for c in chunks if b"Message-ID: <relay-test" in c]) == 2
    assert len(proxy.connections) == 1
    stored = postfix.wait_for_messages(2)
    assert all(b"\n.starts with a dot\n" in raw for raw in stored)  # unstuffed by Postfix
    assert "improper command pipelining" not in postfix.maillog(400)


_PIPELINING = b"250-scripted.test\r\n250 PIPELINING\r\n"
_LOCKSTEP = b"250 scripted.test\r\n"


@pytest.mark.parametrize(
    ("script", "sent_before_quit"),
    [
        pytest.param(  # a 250 where DATA needs its 354: nothing may count as delivered
            [_PIPELINING, b"250 ok\r\n", b"250 ok\r\n", b"250 2.0.0 odd\r\n", b"221 bye\r\n"],
            4,
            id="DATA-250-pipelined",
        ),
        pytest.param(
            [_LOCKSTEP, b"250 ok\r\n", b"250 ok\r\n", b"250 2.0.0 odd\r\n", b"221 bye\r\n"],
            4,
            id="DATA-250-lockstep",
        ),
        pytest.param(  # RFC 5321 §4.3.2: RCPT succeeds with 250 or 251 only
            [
                _PIPELINING,
                b"250 ok\r\n",
                b"252 2.1.5 cannot verify\r\n",
                b"354 go ahead\r\n",
                b"554 5.5.1 no valid recipients\r\n",
                b"221 bye\r\n",
            ],
            5,
            id="RCPT-252-pipelined",
        ),
        pytest.param(
            [_LOCKSTEP, b"250 ok\r\n", b"252 2.1.5 unsure\r\n", b"250 ok\r\n", b"221 bye\r\n"],
            4,
            id="RCPT-252-lockstep",
        ),
        pytest.param(  # MAIL answered with a 2xx other than 250
            [_LOCKSTEP, b"251 odd\r\n", b"250 ok\r\n", b"221 bye\r\n"],
            3,
            id="MAIL-251-lockstep",
        ),
    ],
)
async def test_an_out_of_place_success_reply_is_never_delivered(
    relay_clients: Callable[..., RelayClient], script: list[bytes], sent_before_quit: int
) -> None:
    # A 2xx or 3xx that is not the reply a command needs is a protocol error: the
    # recipient is deferred (4.5.0), never marked delivered, and no content is sent.
    peer = ScriptedPeer(script)
    await peer.start()
    try:
        client = relay_clients()
        route = static_route(peer.port, tls="none", tls_name=None)
        result = await client.deliver(route, envelope("bob@clinique-b.test"), content_of(MESSAGE))
        await client.close()
        outcome = result.per_recipient["bob@clinique-b.test"]
        assert not outcome.delivered and not outcome.permanent
        assert outcome.enhanced == "4.5.0"
        body = b"".join(peer.lines[sent_before_quit:])
        assert set(peer.lines[sent_before_quit:]) <= {b"QUIT\r\n", b".\r\n", b"RSET\r\n"}, body
    finally:
        await peer.stop()
