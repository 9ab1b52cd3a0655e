"""Starting the ``[[listeners]]``: sockets, TLS mode, connection and transfer limits.

Role: ``start_listeners`` is the SMTP front's entry point for the composition root. For
each configured listener it builds the SSL context (``gateway.smtp.tls``), the policy
(``gateway.smtp.policy``) and one asyncio server whose connections are
``gateway.smtp.session.MissiveSMTP``; ``ListenerGroup.aclose`` stops accepting and closes
every open session.

TLS modes (RFC 8314): ``implicit`` = TLS from the first byte (465-style, §3.3);
``starttls`` = plaintext greeting, STARTTLS offered (RFC 3207), required before MAIL on a
submission listener and on a relay listener that requires a client certificate;
``none`` = no TLS (a submission listener then never offers AUTH, RFC 4954 §4 / aiosmtpd).

Limits (every one from the config, STYLE 10): ``max_connections`` and
``max_connections_per_ip`` per listener (over the limit: ``421 4.7.0`` and close,
RFC 5321 §3.8); ``command_timeout`` and ``data_timeout`` per session; concurrent DATA
transfers across all listeners capped at ``max_data_transfers`` (over it: ``451 4.3.2``
before the 354, so no content is read); AUTH failures throttled per IP and per login
(``gateway.smtp.throttle``), shared by all listeners.

Trust level: opens the public sockets; no private key but the TLS ones.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
from dataclasses import dataclass

from gateway.config import Config
from gateway.config.model import Listener
from gateway.errors import ConfigError
from gateway.log import get_logger
from gateway.smime.types import ChainValidator
from gateway.smtp.policy import ListeBlancheLookup, Policy, RelayRules
from gateway.smtp.session import (
    AuditRecorder,
    MessageQueue,
    MissiveSMTP,
    PasswordAuthenticator,
    SessionSettings,
)
from gateway.smtp.throttle import AuthThrottle
from gateway.smtp.tls import server_context

DEFAULT_MAX_DATA_TRANSFERS = 100

_log = get_logger("smtp")


class ConnectionGate:
    """Open connections of one listener: at most ``total``, at most ``per_ip`` per IP."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total = total
        self.per_ip = per_ip
        self._by_ip: Counter[str] = Counter()
        self._open = 0

    @property
    def open(self) -> int:
        return self._open

    def try_acquire(self, key: str) -> bool:
        if self._open >= self.total or self._by_ip[key] >= self.per_ip:
            return False
        self._open += 1
        self._by_ip[key] += 1
        return True

    def release(self, key: str) -> None:
        self._open -= 1
        self._by_ip[key] -= 1
        if self._by_ip[key] <= 0:
            del self._by_ip[key]


class CountGate:
    """At most ``limit`` holders at once (the key is ignored)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def try_acquire(self, key: str) -> bool:
        if self.held >= self.limit:
            return False
        self.held += 1
        return True

    def release(self, key: str) -> None:
        self.held -= 1


@dataclass
class RunningListener:
    """One started listener; ``address`` is the bound (host, port) (port 0 resolved)."""

    listener: Listener
    server: asyncio.Server
    connections: ConnectionGate
    sessions: weakref.WeakSet[MissiveSMTP]

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)


class ListenerGroup:
    """The running listeners; ``aclose()`` stops them and closes their sessions."""

    def __init__(self, listeners: tuple[RunningListener, ...]) -> None:
        self.listeners = listeners

    def address(self, name: str) -> tuple[str, int]:
        for running in self.listeners:
            if running.listener.name == name:
                return running.address
        raise KeyError(name)

    async def aclose(self) -> None:
        for running in self.listeners:
            running.server.close()
        for running in self.listeners:
            for session in list(running.sessions):
                if session.transport is not None:
                    session.transport.close()
        for running in self.listeners:
            await running.server.wait_closed()
            _log.info("listener.stopped", name=running.listener.name)


async def start_listeners(
    config: Config,
    *,
    queue: MessageQueue,
    audit: AuditRecorder,
    validator: ChainValidator | None,
    authenticator: PasswordAuthenticator | None,
    liste_blanche: ListeBlancheLookup | None,
    max_data_transfers: int = DEFAULT_MAX_DATA_TRANSFERS,
    throttle: AuthThrottle | None = None,
) -> ListenerGroup:
    """Start every ``[[listeners]]``; on a failure, the ones already started are closed."""
    shared = _Shared(queue, audit, validator, authenticator, liste_blanche)
    data_transfers = CountGate(max_data_transfers)
    auth_throttle = throttle or AuthThrottle()
    started: list[RunningListener] = []
    try:
        for listener in config.listeners:
            running = await _start_one(config, listener, shared, data_transfers, auth_throttle)
            started.append(running)
    except BaseException:
        await ListenerGroup(tuple(started)).aclose()
        raise
    return ListenerGroup(tuple(started))


@dataclass(frozen=True)
class _Shared:
    queue: MessageQueue
    audit: AuditRecorder
    validator: ChainValidator | None
    authenticator: PasswordAuthenticator | None
    liste_blanche: ListeBlancheLookup | None


async def _start_one(
    config: Config,
    listener: Listener,
    shared: _Shared,
    data_transfers: CountGate,
    throttle: AuthThrottle,
) -> RunningListener:
    context = server_context(config, listener)
    policy = Policy(
        RelayRules.from_config(config, listener),
        send_as=shared.authenticator,
        liste_blanche=shared.liste_blanche,
    )
    connections = ConnectionGate(listener.max_connections, listener.max_connections_per_ip)
    settings = SessionSettings(
        listener=listener,
        hostname=config.gateway.hostname,
        policy=policy,
        queue=shared.queue,
        audit=shared.audit,
        max_message_size=config.delivery.max_message_size,
        connections=connections,
        data_transfers=data_transfers,
        throttle=throttle,
        validator=shared.validator,
        authenticator=shared.authenticator,
        postmaster_domain=config.gateway.local_domains[0],
    )
    sessions: weakref.WeakSet[MissiveSMTP] = weakref.WeakSet()
    starttls = context if listener.tls == "starttls" else None

    def new_session() -> MissiveSMTP:
        session = MissiveSMTP(settings, starttls)
        sessions.add(session)
        return session

    try:
        server = await asyncio.get_running_loop().create_server(
            new_session,
            host=listener.address.host,
            port=listener.address.port,
            ssl=context if listener.tls == "implicit" else None,
            reuse_address=True,
        )
    except OSError as error:  # port taken, no permission, address not on this host
        raise ConfigError(
            f"listeners[{listener.name}]: cannot listen on {listener.address}: "
            f"{error.strerror or error}"
        ) from None
    running = RunningListener(listener, server, connections, sessions)
    host, port = running.address
    _log.info(
        "listener.started",
        name=listener.name,
        kind=listener.kind,
        address=f"{host}:{port}",
        tls=listener.tls,
        client_certificate=listener.client_certificate,
    )
    return running
