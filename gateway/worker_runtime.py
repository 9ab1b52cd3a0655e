"""What runs inside a worker process: the worker kinds, the stage each one runs, how it
stops.

Role (ARCHITECTURE "Each stage can run as its own process"; STYLE §9, least privilege by
process): ``serve_worker(kind, config, slot=K)`` runs one stage in the current process
until its stop event is set; ``missive worker KIND`` (``gateway.workers``) calls it in a
process of its own that ``serve`` started (``gateway.worker_group``). Split out of
``gateway.workers`` (STYLE 11; a pure move, every definition unchanged), which
re-exports every public name.

The kinds (``KINDS``) and what each may hold:

- ``agent`` runs ``gateway.relay.agent_stage.run_agent_worker``; it loads S/MIME private
  keys (``KEY_HOLDERS``: its configuration is loaded with ``agent_keys=True``), as only
  the inbound worker also does, and it opens no listening socket;
- ``relay`` runs ``gateway.relay.relay_stage.run_relay_worker`` (configuration loaded with
  ``agent_keys=False``: it never sees an S/MIME key);
- ``inbound`` runs ``gateway.inbound.stage.run_inbound_worker`` (decrypts and verifies
  mail for local domains: loads private keys, ``agent_keys=True``);
- ``delivery`` runs ``gateway.inbound.delivery.run_delivery_worker`` (LMTP/SMTP/Maildir;
  no private key);
- ``imap`` runs ``gateway.inbound.imap_fetch.run_imap_worker`` (one fetcher per
  ``[[inbound.imap_fetch]]``, into ``inbound/``; no private key);
- ``front`` runs ``gateway.serve.run_front_worker``: one more SMTP front process on the
  same listeners (``SO_REUSEPORT``) when ``[gateway] front_workers`` N > 1; ``serve`` is
  front slot 0 and starts slots 1..N-1. No private key but the TLS ones
  (``agent_keys=False``).

Each stage module is imported only by the worker that runs it (inside the function that
starts it).

Slots: ``--slot K`` sets the slot of every ``Spool`` the worker builds
(``gateway.spool.spooldir.consumer_slot_scope``), so the stage modules need no parameter
for it. The queue consumers and ``front`` take a slot (``SLOTTED``); a front's slot is
not a consumer slot (the front only writes into ``received/``) but its share of the
listener limits (``gateway.smtp.listener``). ``CRYPTO_KINDS`` run one worker per slot
(``gateway.worker_plan``).

Stopping: each worker stops cleanly on SIGTERM, SIGINT or SIGHUP (``stop_on_signals``):
the stage finishes or abandons its in-flight entries (an abandoned one stays in
``active/`` and is recovered by the next worker), closes the spool and the audit trail,
and returns. A front worker whose parent dies (``serve`` killed with SIGKILL: its
children live in their own sessions and get no signal) stops within
``ORPHAN_CHECK_EVERY`` seconds, as on SIGTERM, so that no front is left holding the port
beside those of the next ``serve``. A stage worker that ``serve`` started
(``SUPERVISOR_ENV`` set) does the same, so that the next ``serve``'s workers do not wait
behind orphans holding the consumer locks; one started by hand or by a service manager
(no ``SUPERVISOR_ENV``) lives on its own.

Trust level: that of the kind it runs (above).
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Literal

from gateway.config import Config
from gateway.log import get_logger
from gateway.spool.spooldir import consumer_slot_scope

log = get_logger("workers")

WorkerKind = Literal["agent", "relay", "inbound", "delivery", "imap", "front"]
KINDS: tuple[WorkerKind, ...] = ("agent", "relay", "inbound", "delivery", "imap", "front")
KEY_HOLDERS: tuple[WorkerKind, ...] = ("agent", "inbound")  # load S/MIME private keys
CRYPTO_KINDS: tuple[WorkerKind, ...] = ("agent", "inbound")  # one slot per worker
QUEUE_CONSUMERS: tuple[WorkerKind, ...] = ("agent", "relay", "inbound", "delivery")
SLOTTED: tuple[WorkerKind, ...] = (*QUEUE_CONSUMERS, "front")  # take --slot K
SUPERVISOR_ENV = "MISSIVE_SUPERVISOR_PID"  # set for each worker: see ``supervisor_pid``
ORPHAN_CHECK_EVERY = 1.0  # seconds between a front worker's checks of its parent


async def serve_worker(
    kind: WorkerKind, config: Config, stop: asyncio.Event | None = None, *, slot: int = 0
) -> None:
    """Run the stage ``kind`` as consumer ``slot`` until ``stop`` is set (by SIGTERM/SIGINT
    when not given)."""
    stop = stop or stop_on_signals()
    if kind == "front":  # writes into received/, consumes nothing: no consumer slot
        await _serve_front(config, stop, slot)
        return
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    watch = (
        asyncio.create_task(stop_when_orphaned(stop, int(supervisor)))
        if supervisor.isdigit()
        else None  # started by hand or by a service manager: its own life
    )
    try:
        with consumer_slot_scope(slot):
            await _serve_stage(kind, config, stop, slot)
    finally:
        if watch is not None:
            watch.cancel()


async def _serve_front(config: Config, stop: asyncio.Event, slot: int) -> None:
    from gateway.serve import run_front_worker

    log.info("worker.start", kind="front", slot=slot, pid=os.getpid())
    watch = asyncio.create_task(stop_when_orphaned(stop, supervisor_pid()))
    try:
        await run_front_worker(config, stop, slot=slot)
    finally:
        watch.cancel()
    log.info("worker.stopped", kind="front", slot=slot, pid=os.getpid())


def supervisor_pid() -> int:
    """The PID of the ``serve`` that started this worker (``SUPERVISOR_ENV``, set at
    spawn time), else the parent's: read from the environment, not from ``getppid()``
    once the worker has started, because a supervisor killed while the worker was
    still importing would already have left it to init (or a subreaper)."""
    try:
        return int(os.environ[SUPERVISOR_ENV])
    except (KeyError, ValueError):
        return os.getppid()


async def stop_when_orphaned(
    stop: asyncio.Event, parent: int, every: float = ORPHAN_CHECK_EVERY
) -> None:
    """Set ``stop`` once this process is no longer ``parent``'s child (its supervisor
    died without stopping it): a front worker left behind would keep the public port
    and its share of the limits beside the fronts of the next ``serve``, a stage worker
    its consumer lock."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("worker.orphaned", pid=os.getpid(), parent=parent)
            stop.set()
            return
        await asyncio.sleep(every)


async def _serve_stage(kind: WorkerKind, config: Config, stop: asyncio.Event, slot: int) -> None:
    log.info("worker.start", kind=kind, slot=slot, pid=os.getpid())
    if kind == "agent":
        from gateway.relay.agent_stage import run_agent_worker

        await run_agent_worker(config, stop)
    elif kind == "inbound":
        from gateway.inbound.stage import run_inbound_worker

        await run_inbound_worker(config, stop)
    elif kind == "delivery":
        from gateway.inbound.delivery import run_delivery_worker

        await run_delivery_worker(config, stop)
    elif kind == "imap":
        from gateway.inbound.imap_fetch import run_imap_worker

        await run_imap_worker(config, stop)
    else:
        from gateway.relay.relay_stage import run_relay_worker

        await run_relay_worker(config, stop)
    log.info("worker.stopped", kind=kind, slot=slot, pid=os.getpid())


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM, SIGINT or SIGHUP (``serve`` and the workers): each ends
    in the same clean stop. SIGHUP is the hang-up of the terminal or ssh session a
    ``serve`` was started from; without a handler it would kill ``serve`` at once,
    without stopping its workers or recording ``gateway.stop``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    return stop
