"""The secure agent stage over a real spool: hand-offs to relay/<route> and inbound/,
postal letters in the outbox, DSNs queued into received/, deferral and expiry, a crash
between the hand-offs and ``complete`` that repeats nothing, a bad message held."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from annuaire.errors import DirectoryUnavailable
from annuaire.ldif_backend import LdifDirectory
from annuaire.lookup import CertificateLookup
from annuaire.model import Entry, Mailbox
from annuaire.search import Candidates, PreparedQuery
from gateway.audit import AuditEvent
from gateway.config import Config
from gateway.pki.dev import DevPki
from gateway.relay.agent import SecureAgent
from gateway.relay.agent_stage import AgentStage, handoff_key
from gateway.smime import mime, transfer
from gateway.smime.capabilities import CapabilitiesStore
from gateway.smime.keystore import KeyStore
from gateway.smime.validate import CertificateValidator
from gateway.spool import (
    INBOUND,
    RECEIVED,
    Envelope,
    Origin,
    Recipient,
    RecipientStatus,
    RetryPolicy,
    Spool,
    SpoolWriteError,
    relay_stage,
)
from tests.annuaire.conftest import der_of
from tests.annuaire.directories import raw_records, write_ldif
from tests.annuaire.samples import ATTRIBUTES
from tests.peers.cms_tools import OpenSSLCms
from tests.relay.configs import write_site

ALICE = "alice.martin@chu-a.test"
BRUNO = "bruno.petit@chu-a.test"
CLAIRE = "claire.durand@clinique-b.test"
PAUL = "paul.roux@clinique-b.test"  # no certificate, a postal address
NOPOST = "nopost@clinique-b.test"  # no certificate, no postal address
PARTNER = "zoe@cab.partner.test"  # fallback route:clinique-b, then postal
REJECTED = "someone@elsewhere.test"  # the reject route
SUBJECT = "Compte rendu M. Dupont Jean"
BODY = "Le patient Dupont Jean va mieux."
SUBMISSION = Origin("submission", client_address="127.0.0.1", auth_login=ALICE)
START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def message(*to: str) -> bytes:
    return (
        f"From: Alice Martin <{ALICE}>\r\nTo: {', '.join(to)}\r\nSubject: {SUBJECT}\r\n"
        "Date: Sat, 28 Nov 2026 12:00:00 +0100\r\nMessage-ID: <stage-1@chu-a.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"{BODY}\r\n"
    ).encode()


def envelope(
    *recipients: str, mail_from: str = ALICE, notify: tuple[str, ...] | None = None
) -> Envelope:
    return Envelope(mail_from, tuple(Recipient(a, notify=notify) for a in recipients))


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class Trail:
    """An in-memory audit trail."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> object:
        self.events.append(event)
        return None

    def types(self) -> list[str]:
        return [event.type for event in self.events]


class Unavailable:
    description = "down"

    async def find_by_mail(self, address: str) -> tuple[Entry, ...]:
        raise DirectoryUnavailable("annuaire: down for the test")

    async def search(self, query: PreparedQuery, limit: int) -> Candidates:
        raise DirectoryUnavailable("annuaire: down for the test")

    async def close(self) -> None:
        return None


def person(address: str, *ders: bytes, postal: bool = True) -> Entry:
    extra: dict[str, object] = {}
    if postal:
        extra = {
            "postal_address": ("Service de cardiologie", "12 rue de l'Eglise"),
            "postal_code": "42000",
            "city": "Saint-Etienne",
        }
    return Entry(
        key=address,
        kind="person",
        display_name=address.split("@")[0],
        mailboxes=(Mailbox(address),),
        certificates=ders,
        **extra,  # type: ignore[arg-type]
    )


@dataclass
class Site:
    config: Config
    spool: Spool
    stage: AgentStage
    trail: Trail
    clock: Clock
    pki: DevPki

    async def add(self, env: Envelope, raw: bytes, origin: Origin = SUBMISSION) -> str:
        return await self.spool.queue(RECEIVED).add(env, origin, raw)

    async def entries(self, stage: str, state: str = "incoming") -> list[tuple[Envelope, bytes]]:
        found = []
        queue = self.spool.queue(stage)
        for info in await queue.scan(state):  # type: ignore[arg-type]
            assert info.record is not None
            found.append((info.record.envelope, content_from_reader(info.path)))
        return found


def key_file(path: Path, key: Path, *certificates: Path) -> None:
    path.write_bytes(key.read_bytes() + b"".join(c.read_bytes() for c in certificates))
    path.chmod(0o600)


@pytest.fixture
async def site(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[Site]:
    async for built in make_site(dev_pki, tmp_path):
        yield built


async def make_site(
    pki: DevPki,
    root: Path,
    *,
    directory_down: bool = False,
    checkpoint: Callable[[str], None] = lambda step: None,
) -> AsyncIterator[Site]:
    config = write_site(root, pki)
    keys = config.keys.dir
    for purpose in ("sign", "enc"):
        key_file(
            keys / f"{ALICE}.{purpose}.pem",
            pki.user_key(ALICE, purpose),
            pki.user_cert(ALICE, purpose),
            pki.intermediates,
        )
    validator = CertificateValidator.from_files(
        [pki.root_cert], [pki.intermediates], [pki.crl("personnes"), pki.crl("serveurs")]
    )
    entries = [
        person(ALICE, der_of(pki.user_cert(ALICE, "enc"))),
        person(CLAIRE, der_of(pki.user_cert(CLAIRE, "enc"))),
        person(PAUL),
        person(PARTNER),
        person(NOPOST, postal=False),
    ]
    ldif = write_ldif(root / "annuaire.ldif", raw_records(entries))
    directory = Unavailable() if directory_down else LdifDirectory(ldif, ATTRIBUTES)
    lookup = CertificateLookup(directory, validator)
    agent = SecureAgent(
        config,
        lookup,
        KeyStore.load(keys),
        validator,
        CapabilitiesStore(root / "caps"),
        None,
    )
    clock = Clock()
    trail = Trail()
    spool = Spool(
        config.gateway.spool_dir,
        audit=trail,
        actor="secure-agent",
        max_message_size=1 << 20,
        clock=clock,
        checkpoint=checkpoint,
    )
    policy = RetryPolicy((timedelta(minutes=5),), timedelta(hours=1), jitter=0)
    stage = AgentStage(config, spool, agent, lookup, trail, policy=policy, clock=clock)
    try:
        yield Site(config, spool, stage, trail, clock, pki)
    finally:
        await spool.aclose()


def dsn_parts(raw: bytes) -> tuple[email.message.EmailMessage, list[dict[str, str]]]:
    """The DSN message and its per-recipient status blocks."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    assert parsed.get_content_type() == "multipart/report"
    status = next(p for p in parsed.walk() if p.get_content_type() == "message/delivery-status")
    payload = status.get_payload()
    assert isinstance(payload, list)
    blocks = [
        {k: str(v) for k, v in sub.items()} for sub in payload[1:] if not isinstance(sub, str)
    ]
    return parsed, blocks


def dsn_by_action(dsns: list[tuple[Envelope, bytes]]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for env, raw in dsns:
        assert env.mail_from == "" and env.addresses == (ALICE,)
        _, blocks = dsn_parts(raw)
        for block in blocks:
            out.setdefault(block["Action"], []).append(block)
    return out


# -- tests -----------------------------------------------------------------------------


async def test_one_message_fans_out_to_relay_inbound_post_and_dsns(
    site: Site, openssl_cms: OpenSSLCms
) -> None:
    raw = message(CLAIRE, BRUNO, PAUL, NOPOST, PARTNER, REJECTED)
    await site.stage.received.recover()
    queue_id = await site.add(envelope(CLAIRE, BRUNO, PAUL, NOPOST, PARTNER, REJECTED), raw)
    outcome = await site.stage.process_next()
    assert outcome is not None
    assert outcome.queue_id == queue_id and outcome.disposition == "completed"
    assert len(outcome.handoffs) == 2 and len(outcome.dsns) == 2

    (relayed,) = await site.entries(relay_stage("clinique-b"))
    assert relayed[0].addresses == (CLAIRE,) and relayed[0].mail_from == ALICE
    for secret in (SUBJECT, BODY, "Dupont"):
        assert secret.encode() not in relayed[1]
    (info,) = await site.spool.queue(relay_stage("clinique-b")).scan("incoming")
    assert info.record is not None and info.record.parent == queue_id
    entity = mime.parse_entity(relayed[1])
    der = transfer.base64_decode(entity.body_view)
    opened = openssl_cms.decrypt(
        der, site.pki.user_cert(CLAIRE, "enc"), site.pki.user_key(CLAIRE, "enc")
    )
    assert SUBJECT.encode() in opened

    (local,) = await site.entries(INBOUND)
    assert local[0].addresses == (BRUNO,)
    assert SUBJECT.encode() in local[1]

    outbox = site.config.postal.outbox
    assert len(sorted(outbox.glob("*.pdf"))) == 2 and len(sorted(outbox.glob("*.json"))) == 2
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in outbox.iterdir())

    dsns = await site.entries(RECEIVED)
    assert len(dsns) == 2
    actions = dsn_by_action(dsns)
    failed = {b["Final-Recipient"].split(";")[1].strip(): b for b in actions["failed"]}
    assert set(failed) == {NOPOST, REJECTED}
    assert failed[NOPOST]["Status"] == "5.3.0"
    assert failed[REJECTED]["Status"] == "5.7.1"
    assert sorted(b["Final-Recipient"].split(";")[1].strip() for b in actions["relayed"]) == sorted(
        [PAUL, PARTNER]
    )
    types = site.trail.types()
    assert "agent.smime" in types and "agent.local" in types
    assert types.count("agent.postal") == 2
    assert "spool.completed" in types
    done = await site.stage.drain()  # the DSNs themselves: to the local sender
    assert [o.disposition for o in done] == ["completed", "completed"]
    delivered = sorted(env.addresses for env, _ in await site.entries(INBOUND))
    assert delivered == [(ALICE,), (ALICE,), (BRUNO,)]


def content_from_reader(path: Path) -> bytes:
    from gateway.spool import EntryReader

    reader = EntryReader(path)
    try:
        chunks = []
        while chunk := reader.read(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        reader.close()


async def test_a_crash_before_complete_repeats_nothing(dev_pki: DevPki, tmp_path: Path) -> None:
    raw = message(CLAIRE, BRUNO)
    env = envelope(CLAIRE, BRUNO)

    def crash_at_complete(step: str) -> None:
        if step == "completed.recorded":
            raise SpoolWriteError("simulated crash after the hand-offs")

    async for site in make_site(dev_pki, tmp_path, checkpoint=crash_at_complete):
        await site.stage.received.recover()
        await site.add(env, raw)
        assert await site.stage.process_next() is None  # the spool failed: stays in active/
        assert len(await site.entries(RECEIVED, "active")) == 1
        first_relay = await site.entries(relay_stage("clinique-b"))
        assert len(await site.entries(INBOUND)) == 1  # written before the crash
    async for site in make_site(dev_pki, tmp_path):
        report = await site.stage.received.recover()
        assert len(report.requeued) == 1
        outcomes = await site.stage.drain()
        assert [o.disposition for o in outcomes] == ["completed"]
        assert await site.entries(relay_stage("clinique-b")) == first_relay  # same bytes
        assert [env.addresses for env, _ in await site.entries(INBOUND)] == [(BRUNO,)]


async def test_directory_down_defers_then_expires_with_a_failure_dsn(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    async for site in make_site(dev_pki, tmp_path, directory_down=True):
        await site.stage.received.recover()
        await site.add(envelope(CLAIRE, BRUNO), message(CLAIRE, BRUNO))
        first = await site.stage.process_next()
        assert first is not None
        assert first.disposition == "deferred"
        (deferred,) = await site.spool.queue(RECEIVED).scan("deferred")
        assert deferred.record is not None
        states = dict(
            zip(deferred.record.envelope.addresses, deferred.record.state.recipients, strict=True)
        )
        assert states[BRUNO].status is RecipientStatus.DELIVERED
        assert states[CLAIRE].status is RecipientStatus.DEFERRED
        assert states[CLAIRE].attempts == 1 and "down" in (states[CLAIRE].last_error or "")
        assert len(await site.entries(INBOUND)) == 1

        site.clock.now += timedelta(minutes=6)  # the retry is due, still within lifetime
        second = await site.stage.process_next()
        assert second is not None
        assert second.disposition == "deferred"
        assert len(await site.entries(INBOUND)) == 1  # bruno is not handed off twice

        site.clock.now += timedelta(hours=2)  # past max_lifetime
        third = await site.stage.process_next()
        assert third is not None
        assert third.disposition == "completed"  # bruno was delivered, claire failed
        (dsn,) = await site.entries(RECEIVED)
        (block,) = dsn_by_action([dsn])["failed"]
        assert block["Status"] == "5.4.7"
        assert CLAIRE in block["Final-Recipient"]


@pytest.mark.parametrize(
    ("mail_from", "notify"), [("", None), (ALICE, ("NEVER",)), (ALICE, ("SUCCESS",))]
)
async def test_no_failure_dsn_when_not_asked_or_null_sender(
    site: Site, mail_from: str, notify: tuple[str, ...] | None
) -> None:
    await site.stage.received.recover()
    await site.add(envelope(REJECTED, mail_from=mail_from, notify=notify), message(REJECTED))
    outcome = await site.stage.process_next()
    assert outcome is not None
    assert outcome.disposition == "bounced" and outcome.dsns == ()
    assert await site.entries(RECEIVED) == []
    assert "spool.bounced" in site.trail.types()


async def test_failure_dsn_to_a_remote_sender_hides_the_subject(site: Site) -> None:
    remote = "dr.x@clinique-b.test"
    await site.stage.received.recover()
    await site.add(envelope(REJECTED, mail_from=remote), message(REJECTED))
    await site.stage.process_next()
    ((env, raw),) = await site.entries(RECEIVED)
    assert env.addresses == (remote,)
    assert SUBJECT.encode() not in raw and BODY.encode() not in raw


async def test_a_message_the_agent_cannot_process_is_held(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("malformed")

    monkeypatch.setattr(site.stage.agent, "process", broken)
    await site.stage.received.recover()
    await site.add(envelope(CLAIRE), message(CLAIRE))
    outcome = await site.stage.process_next()
    assert outcome is not None
    assert outcome.disposition == "held"
    (held,) = await site.spool.queue(RECEIVED).scan("hold")
    assert held.record is not None and held.record.state.note == "secure agent error: ValueError"


async def test_run_loop_processes_until_stopped_and_a_second_agent_stands_by(
    site: Site,
) -> None:
    stop = asyncio.Event()
    site.stage.poll_interval = 0.01
    runner = asyncio.create_task(site.stage.run(stop))
    await site.add(envelope(BRUNO), message(BRUNO))
    second_spool = Spool(
        site.config.gateway.spool_dir, audit=Trail(), actor="standby", max_message_size=1 << 20
    )
    second = AgentStage(site.config, second_spool, site.stage.agent, site.stage.lookup, Trail())
    second_stop = asyncio.Event()
    standby = asyncio.create_task(second.run(second_stop))
    try:
        while not await site.entries(INBOUND):
            await asyncio.sleep(0.01)
        assert not standby.done()
    finally:
        second_stop.set()
        await standby
        await second_spool.aclose()
        stop.set()
        await runner
    assert await site.entries(RECEIVED) == []
    assert await site.spool.queue(RECEIVED).scan("active") == []


def test_handoff_key_is_deterministic_and_a_valid_spool_key() -> None:
    from gateway.spool import child_queue_id, new_queue_id

    first = handoff_key("relay", "clinique-b", [CLAIRE, "b@x.test"])
    assert first == handoff_key("relay", "clinique-b", ["b@X.test", CLAIRE])
    assert first != handoff_key("relay", "clinique-b", [CLAIRE])
    # local parts differing by case are two mailboxes: two hand-offs, never one
    assert handoff_key("smime", "b", ["Bob@x.test"]) != handoff_key("smime", "b", ["bob@x.test"])
    assert handoff_key("local", None, [BRUNO]).startswith("local:")
    child_queue_id(new_queue_id(), first)  # accepted by the spool
