"""Which workers ``serve`` starts for a configuration, and their command lines.

Role: ``worker_commands`` names each worker and builds its command line,
``crypto_worker_count`` says how many crypto workers a configuration asks for, and
``start_workers`` spawns them all as one ``WorkerGroup`` (``gateway.worker_group``).
Split out of ``gateway.workers`` (STYLE 11; a pure move, every definition unchanged),
which re-exports every public name.

Several crypto workers (ARCHITECTURE "crypto can use every core"): ``[gateway]
crypto_workers`` (``crypto_worker_count``: 0 means one per CPU core the process may run
on) secure agents and as many inbound agents are started, the worker of index K with
``--slot K`` (slot 0 has no ``--slot``, so a single worker's command line is what it
always was). Workers of different slots consume the same queue at once, each claiming
into its own active directory; a restarted worker recovers its slot's entries and never
those of a live one (``gateway.spool.queue``). Two workers of the *same* slot (extra
relay or delivery workers, which stay single consumers) make the second a hot standby
that takes over when the first stops. The crypto of one agent also runs in threads.
The extra SMTP front processes (``[gateway] front_workers`` - 1) are ``front-K`` with
``--slot K``, K from 1 (``serve`` is front slot 0).

Invariants: at most ``CONSUMER_SLOTS`` agents or inbound agents (one per slot) and
``CONSUMER_SLOTS`` - 1 extra fronts; a negative count is a ``ValueError``. A command line
is an argv tuple, never a shell string; ``DEFAULT_PROGRAM`` runs this very Python with
``-P`` (no module is imported from the working directory).

Trust level: runs in the ``serve`` process and holds no key.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from gateway.config import Config
from gateway.spool.layout import CONSUMER_SLOTS
from gateway.worker_group import WorkerGroup
from gateway.worker_runtime import CRYPTO_KINDS

DEFAULT_PROGRAM: tuple[str, ...] = (sys.executable, "-P", "-m", "gateway")  # -P: not cwd


def crypto_worker_count(config: Config) -> int:
    """How many secure agents and how many inbound agents to start: ``[gateway]
    crypto_workers``, or when it is 0 the CPU cores this process may run on (at most
    ``CONSUMER_SLOTS``)."""
    configured = config.gateway.crypto_workers
    if configured:
        return configured
    return max(1, min(len(os.sched_getaffinity(0)), CONSUMER_SLOTS))


def worker_commands(
    config: Config,
    *,
    agents: int,
    relays: int,
    inbound: int = 0,
    delivery: int = 0,
    imap: int = 0,
    fronts: int = 0,
    program: Sequence[str] = DEFAULT_PROGRAM,
) -> list[tuple[str, tuple[str, ...]]]:
    """``(name, argv)`` of each worker: ``<program> worker <kind> --config <file>``, plus
    ``--slot K`` for the K-th (from 0) agent or inbound worker when K > 0; extra relay
    and delivery workers get no slot (standbys of slot 0). The ``fronts`` extra front
    processes come first, ``front-K`` with ``--slot K`` (K from 1: ``serve`` is front
    slot 0)."""
    if fronts >= CONSUMER_SLOTS:
        raise ValueError(f"at most {CONSUMER_SLOTS - 1} front workers besides serve")
    commands = [
        (f"front-{slot}", (*program, "worker", "front", "--config", str(config.source),
                           "--slot", str(slot)))
        for slot in range(1, fronts + 1)
    ]  # fmt: skip
    counts = (
        ("agent", agents),
        ("relay", relays),
        ("inbound", inbound),
        ("delivery", delivery),
        ("imap", imap),
    )
    if fronts < 0 or any(count < 0 for _, count in counts):
        raise ValueError("the number of workers cannot be negative")
    if agents > CONSUMER_SLOTS or inbound > CONSUMER_SLOTS:
        raise ValueError(f"at most {CONSUMER_SLOTS} agent or inbound workers (one per slot)")
    for kind, count in counts:
        for index in range(count):
            argv = (*program, "worker", kind, "--config", str(config.source))
            if index and kind in CRYPTO_KINDS:
                argv = (*argv, "--slot", str(index))
            commands.append((f"{kind}-{index + 1}", argv))
    return commands


async def start_workers(
    config: Config,
    *,
    agents: int,
    relays: int,
    inbound: int = 0,
    delivery: int = 0,
    imap: int = 0,
    fronts: int = 0,
    program: Sequence[str] = DEFAULT_PROGRAM,
) -> WorkerGroup:
    """Spawn ``fronts`` extra SMTP front, ``agents`` secure agent, ``relays`` relay,
    ``inbound`` inbound agent, ``delivery`` local delivery and ``imap`` IMAP fetcher
    workers for ``config``'s file (``serve`` passes ``crypto_worker_count(config)`` for
    ``agents`` and ``inbound`` and ``[gateway] front_workers`` - 1 for ``fronts``).

    ``program`` is how to run the ``missive`` command line (default: this Python with
    ``-m gateway``). The caller must ``aclose`` the group."""
    commands = worker_commands(
        config,
        agents=agents,
        relays=relays,
        inbound=inbound,
        delivery=delivery,
        imap=imap,
        fronts=fronts,
        program=program,
    )
    group = WorkerGroup(commands)
    try:
        await group.start()
    except BaseException:
        await group.aclose()
        raise
    return group
