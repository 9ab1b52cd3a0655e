"""Which workers ``serve`` starts for a configuration, and their command lines.

Role: ``WorkerCounts`` says how many workers of each kind to start
(``WorkerCounts.from_config``: what ``serve`` starts for a configuration),
``worker_commands`` names each worker and builds its command line,
``crypto_worker_count`` says how many crypto workers a configuration asks for, and
``start_workers`` spawns them all as one ``WorkerGroup`` (``gateway.worker_group``).
Split out of ``gateway.workers`` (STYLE 11), which re-exports every public name.

The counts are one frozen value (STYLE 8), built once from the configuration in
``serve`` and passed down to ``start_workers`` and ``worker_commands``, instead of the
same six keyword parameters repeated by each function (a refactor: the same commands,
in the same order, with the same slots as before). They are checked when built, so a
``WorkerCounts`` that exists can be started.

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
``CONSUMER_SLOTS`` - 1 extra fronts; a negative count is a ``ValueError`` (raised by
``WorkerCounts`` itself). Start order: the extra fronts, then the agents, relays,
inbound agents, local deliveries and IMAP fetchers (``WorkerCounts.stage_workers``).
A command line is an argv tuple, never a shell string; ``DEFAULT_PROGRAM`` runs this
very Python with ``-P`` (no module is imported from the working directory).

Trust level: runs in the ``serve`` process and holds no key.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import Config
from gateway.spool.layout import CONSUMER_SLOTS
from gateway.worker_group import WorkerGroup
from gateway.worker_runtime import CRYPTO_KINDS, WorkerKind

DEFAULT_PROGRAM: tuple[str, ...] = (sys.executable, "-P", "-m", "gateway")  # -P: not cwd


def crypto_worker_count(config: Config) -> int:
    """How many secure agents and how many inbound agents to start: ``[gateway]
    crypto_workers``, or when it is 0 the CPU cores this process may run on (at most
    ``CONSUMER_SLOTS``)."""
    configured = config.gateway.crypto_workers
    if configured:
        return configured
    return max(1, min(len(os.sched_getaffinity(0)), CONSUMER_SLOTS))


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerCounts:
    """How many workers of each kind to start: ``agents`` secure agents, ``relays``
    relays, ``inbound`` inbound agents, ``delivery`` local deliveries, ``imap`` IMAP
    fetchers and ``fronts`` extra SMTP fronts (0 each unless given; keywords only, six
    counts of one type are too easy to swap by position). Checked when built (module
    docstring): a ``WorkerCounts`` that exists can be started."""

    agents: int = 0
    relays: int = 0
    inbound: int = 0
    delivery: int = 0
    imap: int = 0
    fronts: int = 0

    def __post_init__(self) -> None:
        if self.fronts >= CONSUMER_SLOTS:
            raise ValueError(f"at most {CONSUMER_SLOTS - 1} front workers besides serve")
        if self.fronts < 0 or any(count < 0 for _, count in self.stage_workers()):
            raise ValueError("the number of workers cannot be negative")
        if self.agents > CONSUMER_SLOTS or self.inbound > CONSUMER_SLOTS:
            raise ValueError(f"at most {CONSUMER_SLOTS} agent or inbound workers (one per slot)")

    @classmethod
    def from_config(cls, config: Config) -> WorkerCounts:
        """What ``serve`` starts for ``config``: ``crypto_worker_count(config)`` secure
        agents and as many inbound agents, a relay when a route has ``transport =
        "smtp"`` (with none it would have no queue to serve and exit at once), one local
        delivery, an IMAP fetcher when ``[[inbound.imap_fetch]]`` is configured, and
        ``[gateway] front_workers`` - 1 extra fronts."""
        crypto = crypto_worker_count(config)
        return cls(
            agents=crypto,
            relays=1 if _has_smtp_route(config) else 0,
            inbound=crypto,
            delivery=1,
            imap=1 if config.inbound.imap_fetch else 0,
            fronts=config.gateway.front_workers - 1,
        )

    def stage_workers(self) -> tuple[tuple[WorkerKind, int], ...]:
        """``(kind, count)`` of each stage worker, in the order they are started (the
        fronts, which come first, are not in it)."""
        return (
            ("agent", self.agents),
            ("relay", self.relays),
            ("inbound", self.inbound),
            ("delivery", self.delivery),
            ("imap", self.imap),
        )


def _has_smtp_route(config: Config) -> bool:
    """Whether a relay worker has a ``relay/<route>`` queue to serve."""
    return any(route.transport == "smtp" for route in config.routes)


def worker_commands(
    config: Config, counts: WorkerCounts, *, program: Sequence[str] = DEFAULT_PROGRAM
) -> list[tuple[str, tuple[str, ...]]]:
    """``(name, argv)`` of each worker: ``<program> worker <kind> --config <file>``, plus
    ``--slot K`` for the K-th (from 0) agent or inbound worker when K > 0; extra relay
    and delivery workers get no slot (standbys of slot 0). The ``counts.fronts`` extra
    front processes come first, ``front-K`` with ``--slot K`` (K from 1: ``serve`` is
    front slot 0)."""
    commands = [
        (f"front-{slot}", (*program, "worker", "front", "--config", str(config.source),
                           "--slot", str(slot)))
        for slot in range(1, counts.fronts + 1)
    ]  # fmt: skip
    for kind, count in counts.stage_workers():
        for index in range(count):
            argv = (*program, "worker", kind, "--config", str(config.source))
            if index and kind in CRYPTO_KINDS:
                argv = (*argv, "--slot", str(index))
            commands.append((f"{kind}-{index + 1}", argv))
    return commands


async def start_workers(
    config: Config, counts: WorkerCounts, *, program: Sequence[str] = DEFAULT_PROGRAM
) -> WorkerGroup:
    """Spawn the workers of ``counts`` (``worker_commands``) for ``config``'s file
    (``serve`` passes ``WorkerCounts.from_config(config)``).

    ``program`` is how to run the ``missive`` command line (default: this Python with
    ``-m gateway``). The caller must ``aclose`` the group."""
    group = WorkerGroup(worker_commands(config, counts, program=program))
    try:
        await group.start()
    except BaseException:
        await group.aclose()
        raise
    return group
