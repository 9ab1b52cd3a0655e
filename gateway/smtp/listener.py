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

Several front processes (``[gateway] front_workers`` = N > 1, ``docs/operations.md``
"Several SMTP front processes"): ``missive serve`` (slot 0) and N-1 ``missive worker
front --slot K`` processes each open every listener with ``SO_REUSEPORT``, and the Linux
kernel spreads new connections over their sockets by a hash of the 4-tuple. With N = 1
no socket gets ``SO_REUSEPORT`` (a second process cannot bind the port by mistake).
Linux lets only sockets of the same effective UID join a ``SO_REUSEPORT`` group, so
another local user cannot steal connections. A process cannot see the others' counters,
so each enforces its *share* of every limit (``throttle.share_of``: slot K gets
``limit // N``, plus one for the first ``limit % N`` slots; the shares add up to the
limit): ``max_connections``, ``max_connections_per_ip``, the concurrent DATA cap and
the AUTH throttles per IP and per login. The configured figures stay upper bounds of
the whole (the config rules require each listener limit to be at least N; the AUTH
throttle's exception for N above its limits is in ``gateway.smtp.throttle``). Decided
for ``max_connections_per_ip``: divided too, although the kernel's hash ignores the
client, because keeping it per process would multiply the bound by N; the cost is that
an unlucky spread refuses a client before it has its full count (one process holds its
share while another has room), with ``421 4.7.0``, a transient reply the client retries
(RFC 5321 §4.2.1), and a retried connection lands on a new 4-tuple.

Stopping (``ListenerGroup.aclose``, on SIGTERM of ``serve`` or of a front worker): the
listening sockets close first (with several front processes, the others keep
accepting), then DATA transfers in flight get up to ``DRAIN_GRACE`` seconds to end with
their reply (a ``250`` only after the fsync, as always), while a new DATA is refused
with ``451 4.3.2`` before its 354; then every session is closed. A transfer still
running at the deadline is cut without a reply: the client keeps the message and sends
it again (nothing acknowledged is lost; one fsynced but not yet answered may come
twice, at-least-once).

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
from gateway.smtp.throttle import AuthThrottle, ThrottleLimits, share_of, shared_limits
from gateway.smtp.tls import server_context

DEFAULT_MAX_DATA_TRANSFERS = 100
DRAIN_GRACE = 5.0  # seconds; below the supervisor's stop timeout (gateway.workers)

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
    """At most ``limit`` holders at once (the key is ignored); ``close`` admits no one
    more and ``wait_idle`` waits for the last holder to leave."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def try_acquire(self, key: str) -> bool:
        if self.held >= self.limit:
            return False
        self.held += 1
        self._idle.clear()
        return True

    def release(self, key: str) -> None:
        self.held -= 1
        if self.held <= 0:
            self._idle.set()

    def close(self) -> None:
        self.limit = 0

    async def wait_idle(self) -> None:
        await self._idle.wait()


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
    """The running listeners; ``aclose()`` stops them, lets DATA in flight end (up to
    ``drain_grace`` seconds, module docstring) and closes their sessions."""

    def __init__(
        self,
        listeners: tuple[RunningListener, ...],
        data_transfers: CountGate | None = None,
        drain_grace: float = DRAIN_GRACE,
    ) -> None:
        self.listeners = listeners
        self.data_transfers = data_transfers
        self.drain_grace = drain_grace

    def address(self, name: str) -> tuple[str, int]:
        for running in self.listeners:
            if running.listener.name == name:
                return running.address
        raise KeyError(name)

    async def aclose(self) -> None:
        for running in self.listeners:
            running.server.close()
        await self._drain()
        for running in self.listeners:
            for session in list(running.sessions):
                if session.transport is not None:
                    session.transport.close()
        for running in self.listeners:
            await running.server.wait_closed()
            _log.info("listener.stopped", name=running.listener.name)

    async def _drain(self) -> None:
        gate = self.data_transfers
        if gate is None:
            return
        gate.close()
        if gate.held:
            _log.info("listener.draining", data_transfers=gate.held)
        try:
            await asyncio.wait_for(gate.wait_idle(), self.drain_grace)
        except TimeoutError:
            _log.warning("listener.drain_timeout", data_transfers_cut=gate.held)


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
    front_slot: int = 0,
) -> ListenerGroup:
    """Start every ``[[listeners]]`` as front process ``front_slot`` of ``[gateway]
    front_workers`` (limits shared, module docstring); on a failure, the ones already
    started are closed. A ``throttle`` given is used as it is (tests)."""
    share = _Share(config.gateway.front_workers, front_slot)
    shared = _Shared(queue, audit, validator, authenticator, liste_blanche, share)
    data_transfers = CountGate(share.of(max_data_transfers))
    auth_throttle = throttle or AuthThrottle(share.of_throttle(ThrottleLimits()))
    started: list[RunningListener] = []
    try:
        for listener in config.listeners:
            running = await _start_one(config, listener, shared, data_transfers, auth_throttle)
            started.append(running)
    except BaseException:
        await ListenerGroup(tuple(started)).aclose()
        raise
    return ListenerGroup(tuple(started), data_transfers)


@dataclass(frozen=True)
class _Share:
    """This process's share of the limits: slot ``slot`` of ``processes`` front processes."""

    processes: int
    slot: int

    def __post_init__(self) -> None:
        if not 0 <= self.slot < self.processes:
            raise ValueError(f"front slot {self.slot} of {self.processes} front processes")

    @property
    def reuse_port(self) -> bool:
        return self.processes > 1

    def of(self, limit: int) -> int:
        return share_of(limit, self.processes, self.slot)

    def of_throttle(self, limits: ThrottleLimits) -> ThrottleLimits:
        return shared_limits(limits, self.processes, self.slot)


@dataclass(frozen=True)
class _Shared:
    queue: MessageQueue
    audit: AuditRecorder
    validator: ChainValidator | None
    authenticator: PasswordAuthenticator | None
    liste_blanche: ListeBlancheLookup | None
    share: _Share


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
    share = shared.share
    connections = ConnectionGate(
        share.of(listener.max_connections), share.of(listener.max_connections_per_ip)
    )
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
            reuse_port=share.reuse_port,
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
        front=f"{share.slot + 1}/{share.processes}",
        max_connections=connections.total,
        max_connections_per_ip=connections.per_ip,
    )
    return running
