"""Composition root: the one place that builds the gateway's objects from a ``Config``.

Every long-lived object (audit sink today; spool, listeners, validator, annuaire,
workers as their issues land) is made here and nowhere else, so a reader sees in one
page what a running gateway is made of and tests can build the same graph.

Invariants:
- state directories (spool, data, keys, postal outbox, maildir, audit) are created
  0700 before anything writes into them, and an existing one is never loosened;
- the audit retention is applied before the writer starts, so the pruning and the
  sink never race for the head of the hash chain;
- ``close()`` releases everything in reverse order and is idempotent.

Security: this module loads no private key itself; each stage that needs one gets
its path from the config and loads it in the process that needs it (ARCHITECTURE,
least privilege by process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.audit import AuditEvent, AuditSink, AuditStore, PruneResult
from gateway.config import Config
from gateway.log import get_logger

_log = get_logger("app")


def state_directories(config: Config) -> tuple[Path, ...]:
    """The directories the gateway writes to, in creation order."""
    directories = [
        config.gateway.data_dir,
        config.gateway.spool_dir,
        config.keys.dir,
        config.postal.outbox,
        config.audit.path.parent,
    ]
    deliver_to = config.inbound.deliver_to
    if deliver_to.scheme == "maildir" and deliver_to.path is not None:
        directories.append(deliver_to.path)
    return tuple(directories)


def prepare_directories(directories: tuple[Path, ...]) -> None:
    """Create each missing directory (and parents) with mode 0700."""
    for directory in directories:
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def apply_audit_retention(config: Config, now: datetime | None = None) -> PruneResult | None:
    """Prune audit records older than ``audit.retention`` (a checkpoint keeps the chain
    verifiable). Returns None when there is no trail yet."""
    if not config.audit.path.exists():
        return None
    cutoff = (now or datetime.now(UTC)) - config.audit.retention
    with AuditStore.open_writer(config.audit.path, create=False) as store:
        return store.prune(cutoff, actor="missive serve (retention)")


@dataclass
class Gateway:
    """A running gateway's objects. Built by ``build_gateway``; closed by ``close``."""

    config: Config
    audit: AuditSink

    def close(self) -> None:
        self.audit.close()


def build_gateway(config: Config) -> Gateway:
    """Build and start every object of the gateway from ``config``."""
    prepare_directories(state_directories(config))
    pruned = apply_audit_retention(config)
    if pruned is not None and pruned.deleted:
        _log.info("audit.pruned", deleted=pruned.deleted, cutoff=pruned.cutoff)
    audit = AuditSink(config.audit.path)
    audit.start()
    return Gateway(config=config, audit=audit)


def lifecycle_event(kind: str, config: Config, **details: str) -> AuditEvent:
    """An audit event for the gateway's own life cycle (``gateway.start``/``gateway.stop``)."""
    return AuditEvent(
        f"gateway.{kind}",
        actor="missive serve",
        outcome="ok",
        details={"hostname": config.gateway.hostname, "config": str(config.source), **details},
    )
