"""The relay's SMTP client sends one RCPT per mailbox (session 8, H4).

A relay record written by an older gateway may list one mailbox twice, in one spelling
or two. Before the change ``SmtpSession`` sent one RCPT per listed address (the peer
got the mailbox twice: two copies, or a refusal of the second RCPT), keyed outcomes by
the exact spelling, and its pipelined group carried every RCPT. Now the first
occurrence of each mailbox is sent (``Envelope.distinct``) and every occurrence gets
its outcome, as ``gateway.inbound.store_client.StoreSession.send`` does.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.relay.client import RelayClient
from gateway.relay.smtp_reply import Outcome
from gateway.relay.smtp_session import for_every_occurrence
from tests.relay.client_helpers import (
    MESSAGE,
    OUR_HOSTNAME,
    SENDER,
    LockstepHandler,
    ScriptedPeer,
    content_of,
    envelope,
    lockstep_server_fixture,  # noqa: F401 (the lockstep_server fixture)
    relay_clients_fixture,  # noqa: F401 (the relay_clients fixture)
    static_route,
)

BOB = "bob@clinique-b.test"
BOB_UPPER_DOMAIN = "bob@CLINIQUE-B.test"  # the same mailbox (RFC 5321 §2.4)
CAROL = "carol@clinique-b.test"
GONE = "gone@clinique-b.test"
GONE_UPPER_DOMAIN = "gone@CLINIQUE-B.TEST"


def test_every_listed_spelling_gets_the_outcome_of_its_mailbox() -> None:
    accepted = Outcome(250, "2.0.0", "queued", permanent=False)
    refused = Outcome.failed("no such user", "5.1.1")
    listed = envelope(BOB, CAROL, BOB_UPPER_DOMAIN, BOB)
    outcomes = for_every_occurrence(listed, {BOB: accepted, CAROL: refused})
    assert outcomes == {BOB: accepted, CAROL: refused, BOB_UPPER_DOMAIN: accepted}


async def test_lockstep_one_rcpt_per_mailbox_and_each_spelling_delivered(
    lockstep_server: Callable[..., tuple[LockstepHandler, int]],
    relay_clients: Callable[..., RelayClient],
) -> None:
    handler, port = lockstep_server()
    client = relay_clients()
    route = static_route(port, tls="none", tls_name=None)
    listed = envelope(BOB, CAROL, BOB_UPPER_DOMAIN, BOB)
    result = await client.deliver(route, listed, content_of(MESSAGE))
    assert handler.messages == [((BOB, CAROL), MESSAGE)]  # one copy for bob
    assert set(result.per_recipient) == {BOB, CAROL, BOB_UPPER_DOMAIN}
    assert all(outcome.delivered for outcome in result.per_recipient.values())


async def test_lockstep_a_refused_mailbox_is_refused_in_every_spelling(
    lockstep_server: Callable[..., tuple[LockstepHandler, int]],
    relay_clients: Callable[..., RelayClient],
) -> None:
    handler, port = lockstep_server(refused={BOB: "550 5.1.1 no such user"})
    client = relay_clients()
    route = static_route(port, tls="none", tls_name=None)
    result = await client.deliver(
        route, envelope(BOB, BOB_UPPER_DOMAIN, CAROL), content_of(MESSAGE)
    )
    assert handler.messages == [((CAROL,), MESSAGE)]
    for spelling in (BOB, BOB_UPPER_DOMAIN):
        outcome = result.per_recipient[spelling]
        assert outcome.permanent and outcome.enhanced == "5.1.1"
    assert result.per_recipient[CAROL].delivered


async def test_pipelined_group_carries_one_rcpt_per_mailbox(
    relay_clients: Callable[..., RelayClient],
) -> None:
    # one reply per line the peer reads: were a second RCPT sent, it would get the
    # 554 meant for DATA and the transcript below would differ
    peer = ScriptedPeer(
        [
            b"250-scripted.test\r\n250 PIPELINING\r\n",
            b"250 2.1.0 ok\r\n",
            b"550 5.1.1 unknown user\r\n",
            b"554 5.5.1 no valid recipients\r\n",
            b"221 2.0.0 bye\r\n",
        ]
    )
    await peer.start()
    try:
        client = relay_clients()
        route = static_route(peer.port, tls="none", tls_name=None)
        listed = envelope(GONE, GONE_UPPER_DOMAIN, GONE)
        result = await client.deliver(route, listed, content_of(MESSAGE))
        await client.close()
        assert peer.lines == [
            f"EHLO {OUR_HOSTNAME}\r\n".encode(),
            f"MAIL FROM:<{SENDER}>\r\n".encode(),
            f"RCPT TO:<{GONE}>\r\n".encode(),
            b"DATA\r\n",
            b"QUIT\r\n",
        ]
    finally:
        await peer.stop()
    assert set(result.per_recipient) == {GONE, GONE_UPPER_DOMAIN}
    for outcome in result.per_recipient.values():
        assert outcome.permanent and outcome.enhanced == "5.1.1"
