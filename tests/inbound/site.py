"""A local site for the inbound stage and local delivery tests: a configuration on the
session's dev PKI (loaded with the real loader), a spool, an in-memory audit trail, the
two local users' keys in ``var/keys``, and messages made with ``gateway.smime`` as the
outbound agent of another gateway would make them; the inbound agent and local delivery
built on that site with their queue recovered.

Cast: claire.durand@clinique-b.test (outside) writes to alice.martin@ and
bruno.petit@chu-a.test (local); the gateway holds both local users' keys."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from gateway.audit import AuditEvent
from gateway.config import Config
from gateway.inbound.delivery import DEFAULT_CONCURRENCY as DELIVERY_CONCURRENCY
from gateway.inbound.delivery import LocalDelivery
from gateway.inbound.mdn_queue import queue_mdn
from gateway.inbound.stage import DEFAULT_CONCURRENCY as STAGE_CONCURRENCY
from gateway.inbound.stage import InboundStage
from gateway.inbound.store_client import DEFAULT_CONNECTIONS
from gateway.pki.dev import DevPki
from gateway.pki.store import load_first_certificate, load_private_key
from gateway.relay import protect
from gateway.relay.mdn import Disposition
from gateway.smime.encrypt import Recipient as CmsRecipient
from gateway.smime.encrypt import encrypt_entity
from gateway.smime.keystore import KeyStore
from gateway.smime.sign import sign
from gateway.smime.validate import CertificateValidator
from gateway.spool import (
    INBOUND,
    LOCAL,
    RECEIVED,
    EntryReader,
    Envelope,
    Origin,
    Queue,
    Recipient,
    RetryPolicy,
    Spool,
)
from tests.site_config import write_test_config

ALICE = "alice.martin@chu-a.test"
BRUNO = "bruno.petit@chu-a.test"
CLAIRE = "claire.durand@clinique-b.test"
HOST = "mx.chu-a.test"
SECRET = b"Le patient Dupont va mieux."
SUBJECT = "Compte rendu Dupont"
FROM_OUTSIDE = Origin("mx", client_address="127.0.0.1")
INBOUND_AGENT = Origin("mx", client_address="127.0.0.1")  # what queued into ``local/``
MAILDIR = 'deliver_to = "maildir:var/mail"'
HOLD_UNSIGNED_CBC = MAILDIR + '\nunsigned_cbc = "hold"'  # Maildirs; unsigned CBC quarantined
POLICY = RetryPolicy((timedelta(minutes=5),), timedelta(hours=1), jitter=0)

LETTER = (
    b"From: Claire <claire.durand@clinique-b.test>\r\n"
    b"To: Alice <alice.martin@chu-a.test>, Bruno <bruno.petit@chu-a.test>\r\n"
    b"Subject: " + SUBJECT.encode() + b"\r\n"
    b"Date: Sat, 28 Nov 2026 12:00:00 +0100\r\n"
    b"Message-ID: <m1@clinique-b.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n" + SECRET + b"\r\n"
)


def numbered(index: int) -> bytes:
    """``LETTER`` with a Message-ID of its own: ``<m{index}@clinique-b.test>``."""
    return LETTER.replace(b"<m1@clinique-b.test>", f"<m{index}@clinique-b.test>".encode())


def message_ids(stored: list[bytes]) -> list[bytes]:
    """The Message-ID of each stored message, sorted."""
    return sorted(raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0] for raw in stored)


class Trail:
    """An in-memory audit trail."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> object:
        self.events.append(event)
        return None

    def of_type(self, kind: str) -> list[AuditEvent]:
        return [event for event in self.events if event.type == kind]


def real_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Clock:
    """A clock that stays where a test puts it (``now``, by default the time it was made)."""

    now: datetime = field(default_factory=real_now)

    def __call__(self) -> datetime:
        return self.now


def write_config(root: Path, pki: DevPki, *, inbound: str) -> Config:
    """The site's configuration; ``inbound`` is the body of its ``[inbound]`` table."""
    return write_test_config(root, pki, f"[inbound]\n{inbound}\n")


def lmtp_to(port: int) -> str:
    """The ``[inbound]`` body delivering over LMTP to 127.0.0.1:``port``."""
    return f'deliver_to = "lmtp://127.0.0.1:{port}"'


def install_keys(config: Config, pki: DevPki, *addresses: str) -> None:
    """Each address's signing and encryption key files (key, certificate, chain), 0600."""
    for address in addresses:
        for purpose in ("sign", "enc"):
            target = config.keys.dir / f"{address}.{purpose}.pem"
            target.write_bytes(
                pki.user_key(address, purpose).read_bytes()
                + pki.user_cert(address, purpose).read_bytes()
                + pki.intermediates.read_bytes()
            )
            target.chmod(0o600)


def certificate(pki: DevPki, address: str, purpose: str = "enc") -> x509.Certificate:
    return load_first_certificate(pki.user_cert(address, purpose))


def seal(
    pki: DevPki,
    letter: bytes,
    *recipients: str,
    cipher: str = "aes-256-gcm",
    signed: bool = True,
) -> bytes:
    """``letter`` as Claire's gateway sends it: header-protected, signed (unless
    ``signed`` is false), encrypted with ``cipher`` to every address of ``recipients``."""
    split = protect.SplitMessage.of(letter)
    payload = protect.cryptographic_payload(split, protect=True, wrap=False)
    outer = protect.outer_header(split, protect=True)
    if signed:
        key = load_private_key(pki.user_key(CLAIRE, "sign"))
        chain = x509.load_pem_x509_certificates(pki.intermediates.read_bytes())
        payload = sign(payload, certificate(pki, CLAIRE, "sign"), key, chain, detached=True)
    targets = [CmsRecipient(certificate(pki, address)) for address in recipients]
    entity = encrypt_entity(payload, targets, cipher=cipher)
    return outer + b"MIME-Version: 1.0\r\n" + entity


def incoming_letter(
    pki: DevPki,
    *recipients: str,
    cipher: str = "aes-256-gcm",
    signed: bool = True,
) -> bytes:
    """Claire's ``LETTER`` sealed by her gateway for ``recipients`` (see ``seal``)."""
    return seal(pki, LETTER, *recipients, cipher=cipher, signed=signed)


def validator_of(pki: DevPki) -> CertificateValidator:
    """The site's chain validator: the dev PKI's root, intermediates and both CRLs
    (what its ``[trust]`` table names)."""
    return CertificateValidator.from_files(
        [pki.root_cert], [pki.intermediates], [pki.crl("personnes"), pki.crl("serveurs")]
    )


def envelope(*recipients: str, sender: str = CLAIRE) -> Envelope:
    return Envelope(sender, tuple(Recipient(address) for address in recipients))


def open_spool(config: Config, trail: Trail, clock: Clock, actor: str) -> Spool:
    return Spool(
        config.gateway.spool_dir, audit=trail, actor=actor, max_message_size=1 << 20, clock=clock
    )


@dataclass
class OpenSite:
    """A configured site with its spool open: what most inbound tests start from; builds
    the inbound agent and local delivery the way the workers do, their queue recovered."""

    pki: DevPki
    config: Config
    spool: Spool
    trail: Trail
    clock: Clock

    @property
    def inbound(self) -> Queue:
        return self.spool.queue(INBOUND)

    @property
    def local(self) -> Queue:
        return self.spool.queue(LOCAL)

    async def inbound_agent(
        self,
        *,
        clock: Callable[[], datetime] | None = None,
        concurrency: int = STAGE_CONCURRENCY,
    ) -> InboundStage:
        """The inbound agent (keys from ``var/keys``, ``validator_of(pki)``, the site's
        clock unless ``clock`` is given), ``inbound/`` recovered."""
        keys = KeyStore.load(self.config.keys.dir)
        validator = validator_of(self.pki)
        stage = InboundStage(
            self.config,
            self.spool,
            keys,
            validator,
            self.trail,
            clock=clock or self.clock,
            concurrency=concurrency,
        )
        await self.inbound.recover()
        return stage

    async def local_delivery(
        self,
        *,
        concurrency: int = DELIVERY_CONCURRENCY,
        connections: int = DEFAULT_CONNECTIONS,
        tls_context: ssl.SSLContext | None = None,
    ) -> LocalDelivery:
        """Local delivery with ``POLICY`` and the site's clock, ``local/`` recovered."""
        delivery = LocalDelivery(
            self.config,
            self.spool,
            self.trail,
            policy=POLICY,
            clock=self.clock,
            concurrency=concurrency,
            connections=connections,
            tls_context=tls_context,
        )
        await self.local.recover()
        return delivery

    async def mdn_for_one(self, received: bytes, delivered: bytes) -> str | None:
        """Add ``received`` for Alice from outside, claim it as the inbound agent does,
        and ``queue_mdn`` (processed) for its copy ``delivered``: the MDN's entry id in
        ``received/``, or None when none was queued."""
        await self.inbound.add(envelope(ALICE), FROM_OUTSIDE, received)
        await self.inbound.recover()
        entry = await self.inbound.claim()
        assert entry is not None
        return await queue_mdn(
            self.config,
            self.inbound,
            self.spool.queue(RECEIVED),
            entry,
            delivered,
            Recipient(ALICE),
            Disposition.PROCESSED,
            self.clock(),
            audit=self.trail,
            actor="inbound-agent",
        )


@asynccontextmanager
async def opened_site(
    root: Path,
    pki: DevPki,
    *,
    inbound: str,
    actor: str,
    keys_of: tuple[str, ...] = (),
    trail: Trail | None = None,
) -> AsyncIterator[OpenSite]:
    """The site of ``write_config(root, pki, inbound=inbound)`` with the keys of
    ``keys_of`` installed, ``trail`` (a fresh one by default), a fresh clock, and its
    spool opened as ``actor``; the spool is closed on the way out."""
    config = write_config(root, pki, inbound=inbound)
    install_keys(config, pki, *keys_of)
    trail = Trail() if trail is None else trail
    clock = Clock()
    spool = open_spool(config, trail, clock, actor)
    try:
        yield OpenSite(pki, config, spool, trail, clock)
    finally:
        await spool.aclose()


def stored_content(path: Path) -> bytes:
    reader = EntryReader(path)
    try:
        chunks = []
        while chunk := reader.read(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        reader.close()


async def entries(spool: Spool, stage: str, state: str) -> list[tuple[Envelope, bytes]]:
    found = []
    for info in await spool.queue(stage).scan(state):  # type: ignore[arg-type]
        assert info.record is not None
        found.append((info.record.envelope, stored_content(info.path)))
    return found


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every regular file under ``root`` whose bytes contain ``needle``."""
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]
