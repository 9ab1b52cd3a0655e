"""Composition root: the one place that builds the gateway's objects from a ``Config``.

Every long-lived object (audit sink, spool, certificate validator, submission users,
liste blanche; the listeners are started by ``serve`` from these; the secure agent, the
relay and the inbound agent as their issues land) is made here and nowhere else, so a
reader sees in one page what a running gateway is made of and tests can build the same
graph.

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
from gateway.smime.validate import CertificateValidator
from gateway.smtp.listeblanche import ListeBlanche, load_liste_blanche
from gateway.smtp.trace import TRACE_ALLOWANCE
from gateway.smtp.users import Authenticator
from gateway.spool import INBOUND, LOCAL, RECEIVED, Spool, relay_stage
from gateway.spool.scribe_client import ScribeQueue

_log = get_logger("app")


def state_directories(config: Config) -> tuple[Path, ...]:
    """The directories the gateway writes to, in creation order."""
    directories = [
        config.gateway.data_dir,
        config.gateway.spool_dir,
        config.keys.dir,
        config.postal.outbox,
        config.audit.path.parent,
        revocation_cache(config),
    ]
    deliver_to = config.inbound.deliver_to
    if deliver_to.scheme == "maildir" and deliver_to.path is not None:
        directories.append(deliver_to.path)
    return tuple(directories)


def revocation_cache(config: Config) -> Path:
    """Where fetched CRLs are kept, so the last valid one survives a restart."""
    return config.gateway.data_dir / "revocation"


def spool_stages(config: Config) -> tuple[str, ...]:
    """Every queue of the layout (``gateway.spool.layout``), made at start so ``ls`` shows
    the whole pipeline even before a stage has seen a message."""
    relays = tuple(relay_stage(r.name) for r in config.routes if r.transport == "smtp")
    return (RECEIVED, *relays, INBOUND, LOCAL)


def prepare_directories(directories: tuple[Path, ...]) -> None:
    """Create each missing directory (and parents) with mode 0700."""
    for directory in directories:
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def apply_audit_retention(config: Config, now: datetime | None = None) -> PruneResult | None:
    """Prune audit records older than ``audit.retention`` (a checkpoint keeps the chain
    verifiable). Returns None when there is no trail yet.

    A trail file without its schema yet (another process creating the trail at this
    moment, a worker started beside ``serve``, or one that died doing it) is completed
    here as the audit sink would, under the store's write lock: opened with
    ``create=False`` it was "empty, not an audit trail yet" and ``serve`` exited 2."""
    if not config.audit.path.exists():
        return None
    cutoff = (now or datetime.now(UTC)) - config.audit.retention
    with AuditStore.open_writer(config.audit.path) as store:
        return store.prune(cutoff, actor="missive serve (retention)")


@dataclass
class Gateway:
    """A running gateway's objects. Built by ``build_gateway``; closed by ``aclose``."""

    config: Config
    audit: AuditSink
    spool: Spool
    validator: CertificateValidator
    authenticator: Authenticator
    liste_blanche: ListeBlanche | None

    async def aclose(self) -> None:
        """Close the spool first (it records its last events), then the audit trail."""
        try:
            await self.spool.aclose()
        finally:
            self.audit.close()


def build_gateway(config: Config, *, actor: str = "gateway", front_only: bool = False) -> Gateway:
    """Build and start every object of the gateway from ``config``.

    What only reads files (validator, liste blanche, users) is built first, so a bad file
    stops the start before anything is opened for writing. ``front_only``: for an extra
    SMTP front process (``missive worker front``, spool actor ``actor``): no audit
    retention (``serve`` applies it at its start) and no stage directories made beyond
    ``received/``, which it writes into."""
    prepare_directories(state_directories(config))
    validator = CertificateValidator.from_files(
        config.trust.anchors,
        config.trust.intermediates,
        config.trust.crls,
        config.trust.revocation,
        cache_dir=revocation_cache(config),
    )
    liste_blanche = (
        load_liste_blanche(config.trust.liste_blanche)
        if config.trust.liste_blanche is not None
        else None
    )
    authenticator = Authenticator(config.auth.users_file)
    pruned = None if front_only else apply_audit_retention(config)
    if pruned is not None and pruned.deleted:
        _log.info("audit.pruned", deleted=pruned.deleted, cutoff=pruned.cutoff)
    audit = AuditSink(config.audit.path)
    audit.start()
    try:
        spool = Spool(
            config.gateway.spool_dir,
            audit=audit,
            actor=actor,
            max_message_size=config.delivery.max_message_size + TRACE_ALLOWANCE,
        )
        for stage in () if front_only else spool_stages(config):
            spool.queue(stage)
    except BaseException:
        audit.close()
        raise
    return Gateway(
        config=config,
        audit=audit,
        spool=spool,
        validator=validator,
        authenticator=authenticator,
        liste_blanche=liste_blanche,
    )


def front_queue(gateway: Gateway) -> ScribeQueue:
    """``received/`` for an SMTP front process: written by a spool scribe of its own
    (``gateway.spool.scribe``), on the same spool, trail, actor and size limit as
    ``gateway.spool``. Not started: the caller starts it and closes it."""
    config = gateway.config
    return ScribeQueue(
        spool_dir=config.gateway.spool_dir,
        audit_path=config.audit.path,
        actor=gateway.spool.actor,
        max_message_size=config.delivery.max_message_size + TRACE_ALLOWANCE,
        log_level=config.gateway.log_level,
    )


def lifecycle_event(kind: str, config: Config, **details: str) -> AuditEvent:
    """An audit event for the gateway's own life cycle (``gateway.start``/``gateway.stop``)."""
    return AuditEvent(
        f"gateway.{kind}",
        actor="missive serve",
        outcome="ok",
        details={"hostname": config.gateway.hostname, "config": str(config.source), **details},
    )
