"""Review (session 9, R1) of the chunked LMTP transaction of
``gateway.inbound.store_client`` (commit 5197a22) against a real Dovecot.

A chunked transaction sends ``MAIL, RCPT, BDAT n LAST`` and the content in one write,
before any reply is read. The content is untrusted (inbound mail from outside). If the
store refused the transaction and did *not* read the chunk as a chunk, the content's
lines would be read as LMTP commands: a message smuggled into a mailbox without the
gateway's decryption and signature checks. RFC 3030 §2 says the server reads and
discards the chunk; these tests check that the store we ship with does so.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.inbound.store_client import StorePool, StoreTarget
from tests.inbound.site import ALICE, CLAIRE, HOST
from tests.peers.dovecot import DovecotInstance

NOBODY = "nobody.here@chu-a.test"  # not a Dovecot user: its RCPT is refused

SMUGGLED = (
    "Subject: carrier\r\n\r\n"
    "RSET\r\n"
    "MAIL FROM:<forged@clinique-b.test>\r\n"
    f"RCPT TO:<{ALICE}>\r\n"
    "DATA\r\n"
    "Subject: smuggled past the gateway\r\n\r\n"
    "forged\r\n"
    ".\r\n"
    "MAIL FROM:<forged@clinique-b.test>\r\n"
    f"RCPT TO:<{ALICE}>\r\n"
    "BDAT 12 LAST\r\n"
    "Subject: b\r\n"
).encode()


@pytest.mark.peer
async def test_a_refused_recipient_does_not_let_the_chunk_run_as_commands(
    dovecot_factory: Callable[..., DovecotInstance],
) -> None:
    dovecot = dovecot_factory(users={ALICE: "alice-pw"})
    pool = StorePool(StoreTarget(True, "127.0.0.1", dovecot.lmtp_port, HOST), size=1)
    try:
        [refused] = await pool.deliver(CLAIRE, [NOBODY], SMUGGLED)
        [accepted] = await pool.deliver(CLAIRE, [ALICE], b"Subject: real\r\n\r\nreal\r\n")
    finally:
        await pool.aclose()
    assert refused.code // 100 == 5, refused
    assert accepted.code == 250, accepted
    stored = dovecot.fetch_all(ALICE)
    assert len(stored) == 1, [message[:200] for message in stored]
    assert b"Subject: real" in stored[0]


@pytest.mark.peer
async def test_a_refused_sender_does_not_let_the_chunk_run_as_commands(
    dovecot_factory: Callable[..., DovecotInstance],
) -> None:
    """A MAIL FROM Dovecot refuses (a syntax it does not take): RCPT and BDAT are then
    refused too; the chunk must still be read as a chunk."""
    dovecot = dovecot_factory(users={ALICE: "alice-pw"})
    pool = StorePool(StoreTarget(True, "127.0.0.1", dovecot.lmtp_port, HOST), size=1)
    outcome: object
    try:
        try:
            outcome = await pool.deliver("bad sender@@", [ALICE], SMUGGLED)
        except Exception as error:  # noqa: BLE001 - the outcome is not what is checked
            outcome = error
    finally:
        await pool.aclose()
    stored = dovecot.fetch_all(ALICE)
    assert stored == [], (outcome, [message[:200] for message in stored])
