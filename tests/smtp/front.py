"""Test support for the SMTP front: doubles (queue, audit, authenticator, liste blanche),
a configuration built on the dev PKI, a running front, and smtplib helpers run in a
thread (the server runs in the test's event loop)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from gateway.audit import AuditEvent
from gateway.config import Config
from gateway.pki.dev import DevPki
from gateway.smime.validate import CertificateValidator
from gateway.smtp.dnmatch import same_dn
from gateway.smtp.listener import ListenerGroup, start_listeners
from gateway.smtp.session_settings import MessageQueue
from gateway.smtp.throttle import AuthThrottle, ThrottleLimits
from gateway.smtp.users import AuthResult
from gateway.spool import Envelope, Origin
from tests.peers.fixtures import ca_bundle
from tests.site_config import write_test_config

LOCAL = "chu-a.test"
REMOTE = "clinique-b.test"
ALICE = "alice.martin@chu-a.test"
BOB = "bob.durand@chu-a.test"
PASSWORD = "correct horse battery staple"

T = TypeVar("T")


# -- doubles ------------------------------------------------------------------------------


@dataclass
class StoredMessage:
    queue_id: str
    envelope: Envelope
    origin: Origin
    content: bytes


class FakeWriter:
    def __init__(self, queue: FakeQueue, envelope: Envelope, origin: Origin) -> None:
        queue.opened += 1
        self.queue_id = f"Q{queue.opened:04d}"
        self.queue = queue
        self.envelope = envelope
        self.origin = origin
        self.chunks: list[bytes] = []
        self.aborted: str | None = None

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    async def commit(self) -> str:
        self.queue.commit_started.set()
        await self.queue.commit_gate.wait()
        if self.queue.fail_commit is not None:
            raise self.queue.fail_commit
        self.queue.messages.append(
            StoredMessage(self.queue_id, self.envelope, self.origin, b"".join(self.chunks))
        )
        return self.queue_id

    async def abort(self, reason: str) -> None:
        self.aborted = reason
        self.queue.aborted.append(reason)


class FakeQueue:
    """A spool double: keeps committed messages; ``commit_gate`` holds commits back."""

    def __init__(self) -> None:
        self.messages: list[StoredMessage] = []
        self.opened = 0
        self.aborted: list[str] = []
        self.commit_gate = asyncio.Event()
        self.commit_gate.set()
        self.commit_started = asyncio.Event()
        self.fail_commit: Exception | None = None

    async def open_writer(self, envelope: Envelope, origin: Origin) -> FakeWriter:
        return FakeWriter(self, envelope, origin)


class RecordingAudit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    def of_type(self, kind: str) -> list[AuditEvent]:
        return [event for event in self.events if event.type == kind]


class FakeAuthenticator:
    """Logins with a password and the addresses each may use."""

    def __init__(self, users: Mapping[str, Sequence[str]] | None = None) -> None:
        self.users = dict(users or {ALICE: [ALICE], BOB: [BOB]})
        self.calls = 0

    async def authenticate(self, login: str, password: str) -> AuthResult:
        self.calls += 1
        if login in self.users and password == PASSWORD:
            return AuthResult(ok=True, login=login, addresses=frozenset(self.users[login]))
        return AuthResult(ok=False)

    def may_send_as(self, login: str, address: str) -> bool:
        return address in self.users.get(login, ())


class FakeListeBlanche:
    def __init__(self, operators: Mapping[str, Sequence[x509.Name]]) -> None:
        self.operators = operators

    def allows(self, domain: str, peer_dn: x509.Name) -> bool:
        return any(same_dn(peer_dn, dn) for dn in self.operators.get(domain, ()))


# -- configuration ------------------------------------------------------------------------


def write_config(
    directory: Path,
    pki: DevPki,
    listeners: str,
    *,
    accept: str = "any",
    max_message_size: str = "1MB",
    ciphers: str = "",
) -> Config:
    """A configuration on the dev PKI (``mx.chu-a.test``) with the given listeners."""
    tables = f"""\
[delivery]
max_message_size = "{max_message_size}"

[inbound]
accept = "{accept}"

{listeners}"""
    return write_test_config(directory, pki, tables, tls_extra=f'ciphers = "{ciphers}"')


def validator_for(pki: DevPki) -> CertificateValidator:
    return CertificateValidator.from_files(
        [pki.root_cert], [pki.intermediates], [pki.crl("personnes"), pki.crl("serveurs")]
    )


SUBMISSION = """
[[listeners]]
name = "submission"
address = "127.0.0.1:0"
kind = "submission"
tls = "starttls"

[[listeners]]
name = "submissions"
address = "127.0.0.1:0"
kind = "submission"
tls = "implicit"
"""

RELAY = """
[[listeners]]
name = "mx"
address = "127.0.0.1:0"
kind = "relay"
tls = "starttls"
client_certificate = "optional"
"""


@dataclass
class Front:
    group: ListenerGroup
    queue: Any  # FakeQueue unless the test gave its own
    audit: RecordingAudit
    authenticator: FakeAuthenticator
    config: Config
    ca_file: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def port(self, name: str) -> int:
        return self.group.address(name)[1]


@asynccontextmanager
async def running_front(
    config: Config,
    pki: DevPki,
    *,
    queue: MessageQueue | None = None,
    liste_blanche: FakeListeBlanche | None = None,
    authenticator: FakeAuthenticator | None = None,
    max_data_transfers: int = 100,
    throttle: ThrottleLimits | None = None,
) -> AsyncIterator[Front]:
    queue = queue or FakeQueue()  # a real one (a ``ScribeQueue``) where a test needs it
    audit = RecordingAudit()
    authenticator = authenticator or FakeAuthenticator()
    group = await start_listeners(
        config,
        queue=queue,
        audit=audit,
        validator=validator_for(pki),
        authenticator=authenticator,
        liste_blanche=liste_blanche,
        max_data_transfers=max_data_transfers,
        throttle=AuthThrottle(throttle) if throttle else None,
    )
    try:
        yield Front(group, queue, audit, authenticator, config, ca_bundle(pki))
    finally:
        await group.aclose()


# -- clients ------------------------------------------------------------------------------


def client_context(
    ca_file: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


async def in_thread(function: Callable[[], T]) -> T:
    return await asyncio.to_thread(function)


def message(sender: str, recipient: str, body: str = "Bonjour.\r\n") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: test\r\n"
        f"Message-ID: <t1@{LOCAL}>\r\n\r\n{body}"
    ).encode()


def raw_exchange(
    port: int, script: Sequence[bytes | tuple[bytes, int]], *, read_greeting: bool = True
) -> list[str]:
    """Send raw bytes (one element at a time, reading replies in between) to a plaintext
    port; returns every reply line read. Each element expects one reply, or ``n`` for an
    element ``(bytes, n)`` (a pipelined burst)."""
    import socket

    replies: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        if read_greeting:
            replies.append(reader.readline().decode().rstrip())
        for item in script:
            chunk, count = item if isinstance(item, tuple) else (item, 1)
            sock.sendall(chunk)
            for _ in range(count):
                replies.extend(_read_reply(reader))
    return replies


def _read_reply(reader: Any) -> list[str]:
    lines = []
    while True:
        line = reader.readline().decode().rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return lines
