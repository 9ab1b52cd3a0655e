"""Entries in flight (issue 7 Speed): ``consumer.drain`` keeps at most ``concurrency``
entries going and waits for them all; the inbound stage and local delivery with several
entries in flight deliver each message exactly once, whatever order they finish in,
read back from the real Dovecot over IMAP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from gateway.inbound.delivery import LocalDelivery
from gateway.inbound.stage import InboundStage
from gateway.pki.dev import DevPki
from gateway.pki.store import load_private_key
from gateway.relay import protect
from gateway.smime.encrypt import Recipient as CmsRecipient
from gateway.smime.encrypt import encrypt_entity
from gateway.smime.keystore import KeyStore
from gateway.smime.sign import sign
from gateway.smime.validate import CertificateValidator
from gateway.spool import INBOUND, LOCAL, Claimed, Queue
from gateway.spool.consumer import drain
from tests.inbound.site import (
    ALICE,
    CLAIRE,
    FROM_OUTSIDE,
    LETTER,
    POLICY,
    Clock,
    Trail,
    certificate,
    entries,
    envelope,
    install_keys,
    open_spool,
    write_config,
)
from tests.peers.dovecot import DovecotInstance

COUNT = 12


class ListQueue:
    """Just enough of a ``Queue`` for ``consumer.drain``: ``claim`` pops names."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)

    async def claim(self) -> str | None:
        return self.names.pop(0) if self.names else None


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_drain_bounds_the_entries_in_flight_and_waits_for_all(
    concurrency: int,
) -> None:
    in_flight, most, done = 0, 0, []

    async def process(name: Claimed) -> str | None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        for _ in range(3):  # let the others run
            await asyncio.sleep(0)
        in_flight -= 1
        done.append(name)
        return None if str(name) == "e4" else f"outcome of {name}"

    names = [f"e{i}" for i in range(10)]
    queue = ListQueue(names)
    outcomes = await drain(queue, process, concurrency=concurrency)  # type: ignore[arg-type]
    assert most == concurrency
    assert sorted(map(str, done)) == sorted(names)  # each entry processed once
    assert sorted(outcomes) == sorted(f"outcome of {n}" for n in names if n != "e4")


async def test_a_stage_needs_at_least_one_entry_in_flight(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_config(tmp_path, dev_pki, inbound='deliver_to = "maildir:var/mail"')
    trail, clock = Trail(), Clock()
    spool = open_spool(config, trail, clock, "inbound-agent")
    keys = KeyStore.load(config.keys.dir)
    try:
        with pytest.raises(ValueError, match="concurrency"):
            InboundStage(config, spool, keys, None, trail, concurrency=0)
        with pytest.raises(ValueError, match="concurrency"):
            LocalDelivery(config, spool, trail, concurrency=0)
        with pytest.raises(ValueError, match="connection"):
            LocalDelivery(config, spool, trail, connections=0)
    finally:
        await spool.aclose()


def sealed(pki: DevPki, index: int) -> bytes:
    """Claire's letter number ``index`` (a Message-ID of its own), signed and encrypted
    to Alice as her gateway sends it."""
    letter = LETTER.replace(b"<m1@clinique-b.test>", f"<m{index}@clinique-b.test>".encode())
    split = protect.SplitMessage.of(letter)
    payload = protect.cryptographic_payload(split, protect=True, wrap=False)
    key = load_private_key(pki.user_key(CLAIRE, "sign"))
    chain = x509.load_pem_x509_certificates(pki.intermediates.read_bytes())
    signed = sign(payload, certificate(pki, CLAIRE, "sign"), key, chain, detached=True)
    entity = encrypt_entity(signed, [CmsRecipient(certificate(pki, ALICE))], cipher="aes-256-gcm")
    return protect.outer_header(split, protect=True) + b"MIME-Version: 1.0\r\n" + entity


@pytest.mark.peer
async def test_entries_in_flight_are_each_delivered_exactly_once(
    dev_pki: DevPki, tmp_path: Path, dovecot_factory: Callable[..., DovecotInstance]
) -> None:
    dovecot = dovecot_factory(users={ALICE: "alice-pw"})
    config = write_config(
        tmp_path, dev_pki, inbound=f'deliver_to = "lmtp://127.0.0.1:{dovecot.lmtp_port}"'
    )
    install_keys(config, dev_pki, ALICE)
    trail, clock = Trail(), Clock()
    spool = open_spool(config, trail, clock, "inbound-agent")
    validator = CertificateValidator.from_files(
        [dev_pki.root_cert],
        [dev_pki.intermediates],
        [dev_pki.crl("personnes"), dev_pki.crl("serveurs")],
    )
    try:
        inbound: Queue = spool.queue(INBOUND)
        queued = [
            await inbound.add(envelope(ALICE), FROM_OUTSIDE, sealed(dev_pki, i))
            for i in range(COUNT)
        ]
        stage = InboundStage(
            config, spool, KeyStore.load(config.keys.dir), validator, trail, concurrency=6
        )
        await inbound.recover()
        opened = await stage.drain()
        assert sorted(o.queue_id for o in opened) == sorted(queued)
        assert {o.disposition for o in opened} == {"completed"}
        assert len({h for o in opened for h in o.handoffs}) == COUNT
        assert len(await entries(spool, LOCAL, "incoming")) == COUNT

        delivery = LocalDelivery(
            config, spool, trail, policy=POLICY, clock=clock, concurrency=6, connections=2
        )
        await spool.queue(LOCAL).recover()
        delivered = await delivery.drain()
        assert [o.disposition for o in delivered] == ["completed"] * COUNT
        assert delivery.pool is not None and 1 <= delivery.pool.opened <= 2
        assert await entries(spool, LOCAL, "incoming") == []
    finally:
        await spool.aclose()
    assert [e.outcome for e in trail.of_type("inbound.processed")] == ["deliver"] * COUNT
    assert [e.outcome for e in trail.of_type("delivery.local")] == ["delivered"] * COUNT
    stored = dovecot.fetch_all(ALICE)
    ids = sorted(raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0] for raw in stored)
    assert ids == sorted(f"<m{i}@clinique-b.test>".encode() for i in range(COUNT))
