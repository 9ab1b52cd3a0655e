"""What one SMTP session is given: the typed interfaces it uses and ``SessionSettings``.

Role: the contract between ``gateway.smtp.session.MissiveSMTP`` and the rest of the
gateway, one small ``typing.Protocol`` per collaborator (STYLE 2): the spool queue and
its entry writer (``gateway.spool``), the audit trail (``gateway.audit``), the password
authenticator (``gateway.smtp.users``) and the counters that bound connections and DATA
transfers. ``SessionSettings`` bundles them with the listener's configuration; the
listener (``gateway.smtp.listener``, the composition root of the SMTP front) builds one
per listener and every session of that listener shares it.

Invariants:
- ``SessionSettings`` is frozen: a session reads it and never changes it.
- Every bound comes from the configuration (STYLE 10): ``max_message_size``, the
  ``connections`` gate (per client IP) and the ``data_transfers`` gate (concurrent DATA).
- ``PasswordAuthenticator.authenticate`` is asynchronous and never blocks the loop.

Trust level: types only, no I/O; what the implementations see is stated in their own
modules (the SMTP front faces the Internet and holds no private key but the TLS one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.audit import AuditEvent
from gateway.config.model import Listener
from gateway.smime.types import ChainValidator
from gateway.smtp.policy import Policy
from gateway.smtp.throttle import AuthThrottle
from gateway.spool import Envelope, Origin


class MessageWriter(Protocol):
    """One message being spooled (``gateway.spool.EntryWriter``)."""

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> str: ...

    async def abort(self, reason: str) -> None: ...


class MessageQueue(Protocol):
    """Where accepted messages go (``gateway.spool.Queue``)."""

    async def open_writer(self, envelope: Envelope, origin: Origin) -> MessageWriter: ...


class AuditRecorder(Protocol):
    async def record(self, event: AuditEvent) -> Any: ...


class AuthOutcome(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def login(self) -> str | None: ...


class PasswordAuthenticator(Protocol):
    """``gateway.smtp.users.Authenticator``: asynchronous, never blocks the loop."""

    async def authenticate(self, login: str, password: str) -> AuthOutcome: ...

    def may_send_as(self, login: str, address: str) -> bool: ...


class Gate(Protocol):
    """A counter with a limit: connections per IP, concurrent DATA transfers."""

    def try_acquire(self, key: str) -> bool: ...

    def release(self, key: str) -> None: ...


@dataclass(frozen=True)
class SessionSettings:
    """Everything a session of one listener shares with its sibling sessions."""

    listener: Listener
    hostname: str
    policy: Policy
    queue: MessageQueue
    audit: AuditRecorder
    max_message_size: int
    connections: Gate
    data_transfers: Gate
    throttle: AuthThrottle
    validator: ChainValidator | None = None
    authenticator: PasswordAuthenticator | None = None
    postmaster_domain: str | None = None

    @property
    def implicit_tls(self) -> bool:
        return self.listener.tls == "implicit"
