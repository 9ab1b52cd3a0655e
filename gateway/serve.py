"""``missive serve``: start the gateway and run until SIGTERM, SIGINT or SIGHUP.

It validates the configuration (exit 2 with one line per problem), builds the gateway
through the composition root (state directories 0700, audit retention and writer,
spool, certificate validator, users, liste blanche), opens every ``[[listeners]]``, and
records ``gateway.start`` / ``gateway.stop`` in the audit trail.

Then it starts the stage workers (``gateway.workers``), each in its own process: the
secure agent (reads ``received/``, signs and encrypts per route, hands off to
``relay/<route>``, ``inbound/``, the postal outbox or a DSN) and the relay (delivers
``relay/<route>`` with retries and DSNs), the inbound agent (reads ``inbound/``: decrypts,
verifies, marks, quarantines; hands off to ``local/``) and local delivery (``[inbound]
deliver_to``: LMTP, SMTP or maildir), plus the IMAP fetcher when ``[[inbound.imap_fetch]]``
is configured (the relay worker only when a route has ``transport = "smtp"``: with
none it would have no queue to serve and exit at once; the secure agent and the inbound
agent: ``[gateway] crypto_workers`` processes each; ``WorkerCounts.from_config`` in
``gateway.worker_plan`` counts them all). The SMTP front answers ``250`` only once a
message is fsynced into ``received/``, which its spool scribe writes for it
(``gateway.spool.scribe``: a child process of each front process, started before its
listeners open and stopped after they close).

Several SMTP front processes (``[gateway] front_workers`` N > 1): this process is front
slot 0 and opens its listeners with ``SO_REUSEPORT``; it then starts N-1 ``missive
worker front --slot K`` processes (``run_front_worker``) through the same supervisor,
each opening the same listeners, and the kernel spreads new connections over them. Each
process enforces its share of the listener limits (``gateway.smtp.listener``). A front
worker builds what the front needs and nothing more: the certificate validator, the
users, the liste blanche, its own audit sink on the same trail and its own spool scribe,
which writes ``received/`` for it (actor ``smtp-front-K`` in the trail, so each
process's messages can be told apart); it applies no audit retention (``serve`` did at
start) and records no ``gateway.start``/``gateway.stop`` (no worker does: their life is
in the log, ``worker.start``/``worker.stopped``). On SIGTERM it closes its listening
sockets (the others keep accepting), then closes its sessions: a message whose DATA was
not answered gets no ``250``, so the client keeps it and retries; one answered was
fsynced first.

Least privilege: this process is the SMTP front; it loads the TLS key of its listeners
but never an S/MIME private key (the configuration is loaded with ``agent_keys=False``);
only the secure agent's worker process loads private keys.

One ``serve`` per spool: it holds ``flock`` on the spool directory while it runs
(``only_serve_on``), and a second one started on the same spool by mistake exits 2
before building anything. Without it, the second would start a second set of workers on
the same queues and, with ``front_workers`` > 1, even bind the same ports
(``SO_REUSEPORT`` lets any process of the same user join). The lock goes with the
process (a ``kill -9`` frees it). It does not stop a ``serve`` with *another* spool from
joining the ports when ``front_workers`` > 1 (docs/operations.md).

Exit status: 0 after a clean stop on a signal, 2 on a configuration error or when
another ``serve`` runs on the same spool.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from gateway import __version__
from gateway.app import (
    Gateway,
    build_gateway,
    front_queue,
    lifecycle_event,
)
from gateway.cli_common import SubParsers, add_config_argument
from gateway.config import Config, load_config
from gateway.errors import MissiveError, UsageError
from gateway.log import get_logger, setup_logging
from gateway.pki.files import ensure_private_dir
from gateway.smtp.listener import ListenerGroup, start_listeners
from gateway.spool import SpoolWriteError
from gateway.workers import WorkerCounts, start_workers, stop_on_signals

_log = get_logger("serve")


class ScribeNotStarted(MissiveError):
    """The front's spool scribe could not start (an unwritable spool or audit trail, a
    broken install): one line and exit 1, not a traceback; not a configuration error
    (exit 2), which ``serve``'s supervisor would report as one."""

    status = 1


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the gateway (until SIGTERM or Ctrl-C)",
        description="Run the gateway in the foreground; logs go to stdout.",
    )
    add_config_argument(parser)
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    config = load_config(args.config, agent_keys=False)
    setup_logging(config.gateway.log_level)
    asyncio.run(serve(config))
    return 0


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (by SIGTERM/SIGINT/SIGHUP when not given)."""
    with only_serve_on(config.gateway.spool_dir):
        await _serve(config, stop or stop_on_signals())


@contextmanager
def only_serve_on(spool_dir: Path) -> Iterator[None]:
    """Hold ``flock`` on the spool directory itself for the block (module docstring);
    ``UsageError`` (exit 2) when another process holds it or the directory cannot be
    opened. The directory, not a file in it: a lock file removed by hand (``rm``,
    ``rsync --delete``) would let a second ``serve`` lock a new one."""
    try:
        ensure_private_dir(spool_dir)
        fd = os.open(spool_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise UsageError(f"spool directory {spool_dir}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"another missive serve is running on the spool {spool_dir}; stop it first"
        ) from None
    try:
        yield
    finally:
        os.close(fd)


async def _serve(config: Config, stop: asyncio.Event) -> None:
    gateway = build_gateway(config)
    try:
        await gateway.audit.record(lifecycle_event("start", config, version=__version__))
        _log.info(
            "gateway.start",
            version=__version__,
            hostname=config.gateway.hostname,
            config=str(config.source),
        )
        async with _front(gateway) as listeners:
            workers = await start_workers(config, WorkerCounts.from_config(config))
            try:
                _log.info(
                    "gateway.ready",
                    listeners_open=len(listeners.listeners),
                    accepting_mail="yes",
                    front_processes=config.gateway.front_workers,
                    workers=len(workers.workers),
                )
                await stop.wait()
                _log.info("gateway.stopping")
            finally:
                await workers.aclose()
        await gateway.audit.record(lifecycle_event("stop", config))
    finally:
        await gateway.aclose()
    _log.info("gateway.stopped")


@asynccontextmanager
async def _front(gateway: Gateway, slot: int = 0) -> AsyncIterator[ListenerGroup]:
    """The listeners of front ``slot``, writing into ``received/`` through a spool scribe
    of their own (``gateway.spool.scribe``), started first and stopped last: the
    listeners are closed, so their sessions are over, before the scribe's link ends."""
    scribe = front_queue(gateway)
    try:
        await scribe.start()
    except SpoolWriteError as error:
        await scribe.aclose()
        raise ScribeNotStarted(f"{error} (its own lines, if any, are on stderr above)") from None
    try:
        listeners = await start_listeners(
            gateway.config,
            queue=scribe,
            audit=gateway.audit,
            validator=gateway.validator,
            authenticator=gateway.authenticator,
            liste_blanche=gateway.liste_blanche,
            front_slot=slot,
        )
        try:
            yield listeners
        finally:
            await listeners.aclose()
    finally:
        await scribe.aclose()


async def run_front_worker(config: Config, stop: asyncio.Event, *, slot: int) -> None:
    """``missive worker front --slot K``: front process ``slot`` on every listener until
    ``stop`` (module docstring). ``config`` is loaded with ``agent_keys=False``."""
    gateway = build_front(config, slot)
    try:
        async with _front(gateway, slot) as listeners:
            _log.info("front.ready", slot=slot, listeners_open=len(listeners.listeners))
            await stop.wait()
    finally:
        await gateway.aclose()


def build_front(config: Config, slot: int) -> Gateway:
    """What front process ``slot`` needs: ``build_gateway`` without the audit retention
    (``serve`` applies it at its start), with the spool actor ``smtp-front-<slot>``;
    only ``received/`` is used, writer side."""
    return build_gateway(config, actor=f"smtp-front-{slot}", front_only=True)
